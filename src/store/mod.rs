//! The state layer: one [`Store`] trait, two backends.
//!
//! * [`memory::MemoryStore`] — one process only: dev mode, or when the
//!   configuration says `store.backend = "memory"`.
//! * [`redis::RedisStore`] — production; any number of gateway replicas
//!   share it, on a single server (optionally TLS), behind Sentinel or on a
//!   Redis Cluster ([`redis_url::Topology`]).
//!
//! Both pass the same conformance suite (`tests/api/store_conformance.rs`),
//! run against real Redis servers of every topology.
//!
//! Invariants:
//! * every transient value has a TTL;
//! * single-use values (authorization codes, pending logins, refresh tokens)
//!   are read with [`Store::take`], which is atomic: of two concurrent takes,
//!   exactly one sees the value; where a reuse must be detected (codes,
//!   refresh tokens) [`Store::take_and_mark`] takes the value and leaves a
//!   "used" marker in one atomic step, so a concurrent reuse always sees
//!   either the value or the marker, never neither;
//! * records updated read-modify-write (tenants, connections) are written
//!   with [`Store::compare_and_put`] against the bytes read, so of two
//!   concurrent writers one wins and the other learns it lost;
//! * keys are built with [`Key`], which namespaces them and gives each group of
//!   keys that one operation touches together the same Redis Cluster hash tag.

pub mod layer;
pub mod memory;
pub mod metered;
pub mod record_cache;
pub mod redis;
mod redis_batch;
pub mod redis_url;
pub mod session;

pub use layer::StoreLayer;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// An error of the state layer. The detail is for logs; callers answer 503/500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be encoded or decoded.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// A namespaced store key.
///
/// Rendered as `<prefix>:{<tag>}:<name>`. The part in braces is the Redis
/// Cluster hash tag: keys that one operation touches together (a refresh
/// token and its family, a user and its identity links) are built with the
/// same tag so they land in the same slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    tag: String,
    name: String,
}

impl Key {
    /// A key in the hash-tag group `tag`, named `name`.
    pub fn new(tag: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            name: name.into(),
        }
    }

    /// A key scoped to one tenant: tag `t:<tenant>:<group>`.
    pub fn tenant(tenant: &str, group: &str, name: impl Into<String>) -> Self {
        Self::new(format!("t:{tenant}:{group}"), name)
    }

    /// A platform-wide key (not owned by any tenant): tag `g:<group>`.
    pub fn global(group: &str, name: impl Into<String>) -> Self {
        Self::new(format!("g:{group}"), name)
    }

    /// The hash-tag part.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The name within the hash-tag group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key as stored, under `prefix`.
    pub fn render(&self, prefix: &str) -> String {
        // `prefix:{tag}:name`, built in one allocation of the exact size
        // (every store operation renders its keys; `format!` costs more).
        let mut out = String::with_capacity(prefix.len() + self.tag.len() + self.name.len() + 4);
        out.push_str(prefix);
        out.push_str(":{");
        out.push_str(&self.tag);
        out.push_str("}:");
        out.push_str(&self.name);
        out
    }
}

/// The storage seam. Values are opaque bytes (JSON in practice).
///
/// `ttl: None` means the value persists until deleted (tenants, clients,
/// users); everything transient passes a TTL.
///
/// A wrapper that changes only some operations is a [`StoreLayer`]; a
/// method added here gets its forwarding default there.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a value.
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether a value exists at `key`, without transferring it (`EXISTS`
    /// on Redis): for records read only to learn that they are there. The
    /// default reads the value; wrappers forward it so the backend's own
    /// answers.
    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        exists_by_get(self, key).await
    }

    /// A fingerprint of the value at `key` ([`fingerprint_of`] the stored
    /// bytes: their write stamp when they begin with one, else their
    /// lowercase hex SHA-1), `None` when absent, computed where the value
    /// is stored so that it is not transferred (in a script on Redis): a
    /// few bytes instead of a record, for a caller that keeps a decoded
    /// copy and only needs to know whether it is still what is stored. Any
    /// write that changes what the record says changes it (a stamped record
    /// is only ever written with a fresh stamp, see [`stamped`]). The
    /// fingerprint is of the bytes as stored (sealed, where the store seals),
    /// so it is only ever compared with fingerprints from the same store.
    /// SHA-1 is a change detector here, not a security boundary: the
    /// records it is used for are written only by their administrators.
    /// The default reads the value; wrappers forward it.
    async fn fingerprint(&self, key: &Key) -> Result<Option<String>, StoreError> {
        fingerprint_by_get(self, key).await
    }

    /// Reads the value at `key` only if it is not the one the caller
    /// already holds: `known` is the fingerprint ([`Store::fingerprint`]) of
    /// the stored bytes the caller decoded earlier. Answers
    /// [`IfChanged::Unchanged`] when the stored bytes still have that
    /// fingerprint (nothing else is transferred), [`IfChanged::Absent`] when
    /// nothing is stored, and otherwise the value with the fingerprint of
    /// the very bytes answered, computed in the same atomic step (one Lua
    /// script on Redis, one lock in memory): one round trip where a
    /// fingerprint and then a read took two, and no window in which a
    /// concurrent write could pair a value with another value's
    /// fingerprint. `known: None` reads the value and its fingerprint.
    /// Every wrapper must forward it (the fingerprint is of the bytes as
    /// stored, so a wrapper that transforms values cannot compute it), which
    /// is why there is no default.
    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError>;

    /// Reads several keys of one hash tag in one round trip (one Lua script
    /// on Redis): for each key, its value ([`Read::Value`]) or only whether
    /// it exists ([`Read::Presence`]: `Some` of an empty value when it does,
    /// the value itself is not transferred). Answers in the order asked.
    /// The reads are one atomic step (a script), so the answers are of one
    /// moment. Every key must share the first key's hash tag (Redis
    /// Cluster); otherwise nothing is read and the answer is an error.
    /// Every wrapper must forward it: there is no default.
    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Writes `value` at `key` (as [`Store::put`]) and then, in the same
    /// atomic step (one Lua script on Redis, one lock in memory), reads the
    /// value at `read`: write-then-read in one round trip, for the
    /// detection schemes where each side writes its own key and then looks
    /// for the other's (`provider/codes.rs`). Both keys must share a hash
    /// tag (Redis Cluster); otherwise nothing is written and the answer is
    /// an error. Every wrapper must forward it: there is no default.
    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a value, replacing any previous one.
    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;

    /// Writes a value only if the key is absent. Returns `true` if written.
    /// Atomic: of two concurrent calls for one key, exactly one returns `true`.
    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError>;

    /// Writes `value` only if the value at `key` is currently `expected`, byte
    /// for byte (an absent key never matches). Returns `true` if written.
    /// Atomic: of any number of concurrent calls that read the same value and
    /// compare against it, exactly one returns `true`; the others see the new
    /// value and return `false`, so a read-modify-write never loses an update.
    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError>;

    /// Reads and deletes a value in one atomic step. Of two concurrent takes
    /// of one key, exactly one sees `Some`.
    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError>;

    /// Takes the value at `key` and, in the same atomic step, writes
    /// `marker_value` at `marker_key` (with `marker_ttl`): single use with
    /// replay detection in one operation. When `key` is absent, answers the
    /// marker that is already there, if any. Of any number of concurrent
    /// calls for one key, exactly one sees [`Taken::Value`] and every later
    /// one sees [`Taken::Marker`] (the marker is written before anyone can
    /// observe the value gone). Both keys must share a hash tag (Redis Cluster).
    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError>;

    /// Deletes a value. Returns `true` if it existed.
    async fn delete(&self, key: &Key) -> Result<bool, StoreError>;

    /// Adds `member` to the set at `key` (creating it), and sets the set's TTL
    /// when `ttl` is given (extending, never shortening, an existing TTL; a
    /// set that had no TTL takes the given one). `ttl: None` leaves any TTL.
    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError>;

    /// Removes `member` from the set at `key`.
    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError>;

    /// The members of the set at `key` (empty when absent), sorted.
    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError>;

    /// Up to `count` distinct members of the set at `key`, picked at random
    /// (`SRANDMEMBER` on Redis; empty when absent): for a sweep that looks
    /// at a few members at a time rather than reading a large set whole.
    async fn set_sample(&self, key: &Key, count: usize) -> Result<Vec<String>, StoreError>;

    /// Increments the counter at `key` by one and returns the new value; the
    /// TTL is set when the counter is created (a fixed window).
    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError>;

    /// Pushes `value` at the head of the list at `key` (creating it) and, in
    /// the same atomic step, trims the list to its `max_len` newest values
    /// (at least one is kept): a bounded log, newest first. The list has no
    /// TTL; its length is what bounds it.
    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError>;

    /// Up to `count` values of the list at `key`, from position `start`
    /// (0 is the newest), newest first; empty when absent or past the end.
    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Appends `value` to the stream at `key` (creating it) and, in the same
    /// step, trims the stream to its `max_len` newest entries (exactly; at
    /// least one is kept). Returns the new entry's id (`<ms>-<seq>`, ordered:
    /// every id is greater than the ones before it in that stream).
    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError>;

    /// [`Self::stream_add`] for an entry of one class of a stream that holds
    /// several (the audit log's admin changes and security events): in the
    /// same step the new id is pushed on the class's list `class` (a key of
    /// the same hash tag), and while that list holds more than `class_max`
    /// ids its oldest are taken off it and deleted from the stream. The
    /// stream as a whole is still trimmed to `max_len`. So however many
    /// entries one class gets, the newest `class_max` of every other class
    /// stay (unless `max_len` is below the classes' sum).
    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError>;

    /// Up to `count` entries of the stream at `key`, oldest first, with ids
    /// strictly greater than `after` (from the start without one); empty when
    /// absent. `after` must be a stream id (`<ms>-<seq>`).
    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError>;

    /// Up to `count` entries of the stream at `key`, newest first, with ids
    /// strictly smaller than `before` (from the newest without one).
    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;

    /// The number of entries in the stream at `key` (0 when absent).
    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError>;

    /// Creates the consumer group `group` on the stream at `key` (creating an
    /// empty stream), reading from the stream's first entry. Idempotent: an
    /// existing group is left as it is.
    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError>;

    /// Up to `count` entries no consumer of `group` has been given yet,
    /// oldest first, now pending for `consumer` until acknowledged
    /// (`XREADGROUP ... >`). Never blocks. A missing group is an error.
    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;

    /// Acknowledges entry `id` for `group`: it is no longer pending for
    /// anyone. Returns `true` if it was pending.
    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError>;

    /// Moves to `consumer` up to `count` entries pending in `group` that no
    /// consumer has been given for at least `min_idle` (a consumer that died
    /// or gave up), oldest first, and returns them (`XAUTOCLAIM`). Pending
    /// entries the stream has trimmed away meanwhile are dropped from the
    /// group and not returned.
    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;
    /// Counts one request against the rate limit at `key`: at most `limit`
    /// requests per `window`, spread evenly (GCRA, a token bucket of
    /// `limit` tokens refilled over `window`: a burst of `limit` is allowed,
    /// then one request per `window / limit`). A refused request is not
    /// counted. Atomic (one Lua script over one key on Redis, one lock in
    /// memory), so any number of replicas share one limit. The time is the
    /// store's: the Redis server's clock (one clock for every replica), the
    /// injected clock in memory. `limit == 0` refuses everything. The key
    /// holds the bucket's state with a TTL of at most `window`.
    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError>;

    /// Counts one request against two rate limits in turn, each exactly as
    /// [`Store::rate_limit`]: `first`, and only if it allows the request,
    /// `second` (a request refused by the first limit is counted by
    /// neither). Answers the first decision and, when the first allowed,
    /// the second's. Backends that can do it in one round trip do (one
    /// script on a single Redis server or behind Sentinel); on a Redis
    /// Cluster, where the two keys may live on different nodes, and by
    /// default, it is two [`Store::rate_limit`] calls in a row.
    async fn rate_limit_chain(
        &self,
        first: (&Key, u64),
        second: (&Key, u64),
        window: Duration,
    ) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
        rate_limit_chain_in_steps(self, first, second, window).await
    }

    /// Counts one request against `limits` in turn, each exactly as
    /// [`Store::rate_limit`] and stopping at the first that refuses (as
    /// [`Store::rate_limit_chain`]), provided the record at `guard.0` still
    /// has the fingerprint `guard.1` ([`Store::fingerprint`]). Answers
    /// `None`, with nothing counted, when it does not (changed or gone);
    /// otherwise the decisions made, in order (shorter than `limits` after a
    /// refusal). For a caller whose limits come from a record it keeps
    /// decoded: the limits are checked to be the stored record's and
    /// counted in one step. One script on a single Redis server or behind
    /// Sentinel (the check and the counts atomic); on a Redis Cluster, where
    /// the keys may live on different nodes, and by default: the check, then
    /// the counts ([`rate_limit_guarded_in_steps`]).
    async fn rate_limit_guarded(
        &self,
        guard: (&Key, &str),
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        rate_limit_guarded_in_steps(self, guard, limits, window).await
    }

    /// Checks that the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Reads several keys of one hash tag in one atomic step (one Lua
    /// script on Redis, one lock in memory), each as its [`Probe`] says:
    /// a record the caller keeps decoded, re-validated by the fingerprint
    /// of its stored bytes exactly as [`Store::get_if_changed`] does
    /// ([`Probe::IfChanged`]), only whether a value exists
    /// ([`Probe::Presence`]), or the members of a set ([`Probe::Members`]).
    /// Answers in the order asked, one [`Probed`] of the probe's kind per
    /// key. For a request that needs several configuration records of one
    /// tenant (its record, a connection, the connection's incarnation, the
    /// connection set): one round trip where there were several, and every
    /// answer of one moment, so a change is seen whole or not at all.
    /// Every key must share the first key's hash tag (Redis Cluster);
    /// otherwise nothing is read and the answer is an error. A value of
    /// another type than the probe reads is corrupt. Every wrapper must
    /// forward it (the fingerprint is of the bytes as stored): there is no
    /// default.
    async fn read_many_if_changed(&self, keys: &[(&Key, Probe<'_>)]) -> Result<Vec<Probed>, StoreError>;

    /// Applies several writes ([`Write`]: put, set add, delete, each
    /// exactly as its own method) to keys of one hash tag, in the order
    /// given, in one atomic step (one Lua script on Redis, one lock in
    /// memory): one round trip where a request wrote a record and its
    /// companions one after the other, and no reader ever sees some of them
    /// written and not the others. Every key must share the first one's
    /// hash tag (Redis Cluster); otherwise nothing is written and the
    /// answer is an error. A set write over a key holding another type is
    /// refused before anything is written. When a [`Write::RequireAbsent`]
    /// key holds a value, or a [`Write::RequireValue`] key holds another
    /// value than the one given, nothing is written and the answer is
    /// `false`; otherwise every write is applied and the answer is `true`.
    /// Every write is idempotent and [`Write::RequireAbsent`] only ever
    /// turns a repeat into "nothing written", so without a
    /// [`Write::RequireValue`] the whole is retried as `put` is; with one,
    /// a repeat of an applied call would answer `false`, so it is retried
    /// only when certainly not executed, as `compare_and_put` is. Every
    /// wrapper must forward it (a sealing wrapper seals the values it seals
    /// for `put`): no default.
    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError>;

    /// A refresh-token rotation in one atomic step (one Lua script on
    /// Redis, one lock in memory), all keys of one hash tag: when
    /// [`Rotate::requires`] (the family) is absent, nothing changes and the
    /// answer is [`Taken::Absent`]; otherwise exactly
    /// [`Store::take_and_mark`] of [`Rotate::key`] with its marker, and,
    /// only when the value was taken, [`Rotate::next_key`] written (as
    /// [`Store::put`]) in the same step. So the next token exists if and
    /// only if this call consumed the current one while its family was
    /// alive; of any number of concurrent calls exactly one writes it. Keys
    /// of several hash tags are refused before anything is read or
    /// written. Conditional, so it is retried only when certainly not
    /// executed. Every wrapper must forward it: no default.
    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError>;

    /// Reads the value at `pointer` and, in the same atomic step (one Lua
    /// script on Redis, one lock in memory), the keys it names: for each
    /// `(prefix, how)` the key of the pointer's hash tag named `prefix`
    /// followed by the pointer's value, read as [`Store::read_many`] reads
    /// (its value, or only its presence). `None` when the pointer is
    /// absent (nothing else is read). One round trip where an index (an
    /// identity link naming a user) and then what it names took two; the
    /// keys read share the pointer's tag by construction (Redis Cluster).
    /// A pointer value that is not UTF-8 is an error about the data.
    /// Every wrapper must forward it: no default.
    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError>;
}

/// How [`Store::read_many_if_changed`] reads one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<'a> {
    /// The value unless its stored bytes still have this fingerprint, as
    /// [`Store::get_if_changed`] (`None`: the value and its fingerprint).
    IfChanged(Option<&'a str>),
    /// Only whether a value exists (nothing is transferred).
    Presence,
    /// The members of the set at the key (empty when absent), sorted.
    Members,
}

/// One answer of [`Store::read_many_if_changed`], of the kind its
/// [`Probe`] asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// For [`Probe::IfChanged`]: as [`Store::get_if_changed`] answers.
    Read(IfChanged),
    /// For [`Probe::Presence`]: whether a value exists.
    Present(bool),
    /// For [`Probe::Members`]: the set's members, sorted.
    Members(Vec<String>),
}

/// Checks that every key of a [`Store::read_many_if_changed`] shares the
/// first one's hash tag. Names only the tag: key names can be secrets.
pub fn one_tag_probed(keys: &[(&Key, Probe<'_>)]) -> Result<(), StoreError> {
    match keys.split_first() {
        Some(((first, _), rest)) if rest.iter().any(|(k, _)| k.tag() != first.tag()) => {
            Err(StoreError::Corrupt(format!(
                "read_many_if_changed over keys of several hash tags ({{{}}}, ...)",
                first.tag()
            )))
        }
        _ => Ok(()),
    }
}

/// The keys [`Store::read_through`] reads for the pointer value `value`:
/// each `prefix` + `value`, in the pointer's hash tag.
pub fn through_keys(pointer: &Key, value: &[u8], reads: &[(&str, Read)]) -> Result<Vec<Key>, StoreError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| StoreError::Corrupt(format!("a pointer in {{{}}} is not text", pointer.tag())))?;
    Ok(reads
        .iter()
        .map(|(prefix, _)| Key::new(pointer.tag(), format!("{prefix}{value}")))
        .collect())
}

/// One write of [`Store::write_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// Writes `value` at `key`, as [`Store::put`].
    Put {
        /// The key.
        key: &'a Key,
        /// The value.
        value: &'a [u8],
        /// Its TTL; `None`: persists.
        ttl: Option<Duration>,
    },
    /// Adds `member` to the set at `key`, as [`Store::set_add`] (the TTL
    /// extended, never shortened).
    SetAdd {
        /// The set's key.
        key: &'a Key,
        /// The member.
        member: &'a str,
        /// The set's TTL; `None`: leaves any TTL.
        ttl: Option<Duration>,
    },
    /// Deletes the value at `key`, as [`Store::delete`].
    Delete {
        /// The key.
        key: &'a Key,
    },
    /// Writes nothing: a condition of the whole [`Store::write_many`],
    /// which writes nothing at all (and answers `false`) when a value is
    /// present at `key`. A tombstone checked and honoured in the same step
    /// as the writes it forbids.
    RequireAbsent {
        /// The key that must hold nothing.
        key: &'a Key,
    },
    /// Writes nothing: a condition of the whole [`Store::write_many`],
    /// which writes nothing at all (and answers `false`) unless the value
    /// at `key` is `value`, byte for byte (an absent key never matches):
    /// [`Store::compare_and_put`]'s condition, for a record whose
    /// compare-and-set must carry companions written in the same step. A
    /// sealing wrapper compares openings, as it does for
    /// `compare_and_put`.
    RequireValue {
        /// The key whose value is compared.
        key: &'a Key,
        /// The value it must hold.
        value: &'a [u8],
    },
}

impl Write<'_> {
    /// The key written (for a condition, the key checked).
    pub fn key(&self) -> &Key {
        match self {
            Write::Put { key, .. }
            | Write::SetAdd { key, .. }
            | Write::Delete { key }
            | Write::RequireAbsent { key }
            | Write::RequireValue { key, .. } => key,
        }
    }
}

/// Checks that every key of a [`Store::write_many`] shares the first one's
/// hash tag. Names only the tag: key names can be secrets.
pub fn one_write_tag(writes: &[Write<'_>]) -> Result<(), StoreError> {
    match writes.split_first() {
        Some((first, rest)) if rest.iter().any(|w| w.key().tag() != first.key().tag()) => {
            Err(StoreError::Corrupt(format!(
                "write_many over keys of several hash tags ({{{}}}, ...)",
                first.key().tag()
            )))
        }
        _ => Ok(()),
    }
}

/// What [`Store::rotate`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotate<'a> {
    /// The single-use value taken (the current token).
    pub key: &'a Key,
    /// Its "used" marker, written when it is taken.
    pub marker_key: &'a Key,
    /// The marker's value.
    pub marker_value: &'a [u8],
    /// The marker's TTL.
    pub marker_ttl: Duration,
    /// A key that must exist for anything to happen (the family).
    pub requires: &'a Key,
    /// The value written when, and only when, `key` was taken (the next token).
    pub next_key: &'a Key,
    /// Its value.
    pub next_value: &'a [u8],
    /// Its TTL; `None`: persists.
    pub next_ttl: Option<Duration>,
}

impl Rotate<'_> {
    /// Refuses keys of several hash tags (Redis Cluster). Names only the tag.
    pub fn one_tag(&self) -> Result<(), StoreError> {
        let tag = self.key.tag();
        if [self.marker_key, self.requires, self.next_key]
            .iter()
            .any(|k| k.tag() != tag)
        {
            return Err(StoreError::Corrupt(format!(
                "rotate over keys of several hash tags ({{{tag}}}, ...)"
            )));
        }
        Ok(())
    }
}

/// [`Store::exists`] by reading the value: the trait's default, for a
/// backend (or a [`StoreLayer`]) that has no cheaper way to tell.
pub async fn exists_by_get<S: Store + ?Sized>(store: &S, key: &Key) -> Result<bool, StoreError> {
    Ok(store.get(key).await?.is_some())
}

/// [`Store::fingerprint`] by reading the value and fingerprinting it here
/// ([`fingerprint_of`]): the trait's default.
pub async fn fingerprint_by_get<S: Store + ?Sized>(store: &S, key: &Key) -> Result<Option<String>, StoreError> {
    Ok(store.get(key).await?.map(|v| fingerprint_of(&v)))
}

/// [`Store::rate_limit_chain`] as two [`Store::rate_limit`] calls in a
/// row, the second only when the first allowed: the trait's default.
pub async fn rate_limit_chain_in_steps<S: Store + ?Sized>(
    store: &S,
    first: (&Key, u64),
    second: (&Key, u64),
    window: Duration,
) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
    let d = store.rate_limit(first.0, first.1, window).await?;
    if !d.allowed {
        return Ok((d, None));
    }
    let d2 = store.rate_limit(second.0, second.1, window).await?;
    Ok((d, Some(d2)))
}

/// [`Store::rate_limit_guarded`] as separate operations: the guard's
/// fingerprint, then each limit in turn. Not atomic: a record changed
/// between the check and the counts was changed concurrently with this
/// request, which may then be counted under either.
pub async fn rate_limit_guarded_in_steps<S: Store + ?Sized>(
    store: &S,
    guard: (&Key, &str),
    limits: &[(&Key, u64)],
    window: Duration,
) -> Result<Option<Vec<RateDecision>>, StoreError> {
    if store.fingerprint(guard.0).await?.as_deref() != Some(guard.1) {
        return Ok(None);
    }
    let mut decisions = Vec::with_capacity(limits.len());
    for (key, limit) in limits {
        let d = store.rate_limit(key, *limit, window).await?;
        let allowed = d.allowed;
        decisions.push(d);
        if !allowed {
            break;
        }
    }
    Ok(Some(decisions))
}

/// How a stamped record begins: its first member is the write stamp
/// (`{"_w":"<stamp>",...}`).
const STAMP_OPEN: &[u8] = b"{\"_w\":\"";

/// A write stamp's length: 16 random bytes in base64url.
const STAMP_LEN: usize = 22;

/// The JSON object `json` with a fresh write stamp as its first member
/// (`"_w"`: 128 random bits in base64url, drawn for this write). The
/// fingerprint of a stamped record is its stamp ([`fingerprint_of`]), which
/// a store reads without reading or hashing the rest of the record (on
/// Redis: the first 31 bytes, `GETRANGE`), so re-validating a large record
/// costs what a small one does. The contract that makes that exact: a
/// stamp names one content. Every write that encodes a record draws a new
/// one; what may keep a stamp is only a write of the same content (the
/// same bytes again, or its secrets sealed again). Writers that do not
/// stamp (earlier versions, during a rolling update) write bytes that do
/// not begin with a stamp, whose fingerprint is their SHA-1: a change
/// either way. Readers decode the member as an unknown field (ignored).
/// Something that is not a JSON object is returned unchanged.
pub fn stamped(json: &[u8]) -> Vec<u8> {
    let Some(rest) = json.strip_prefix(b"{") else {
        return json.to_vec();
    };
    let stamp = crate::tokens::random_token(16);
    let mut out = Vec::with_capacity(json.len() + STAMP_OPEN.len() + STAMP_LEN + 2);
    out.extend_from_slice(STAMP_OPEN);
    out.extend_from_slice(stamp.as_bytes());
    out.push(b'"');
    match rest.trim_ascii_start() {
        // An empty object: the stamp is its only member, followed by `}`.
        empty @ [b'}', ..] => out.extend_from_slice(empty),
        _ => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
    }
    out
}

/// The name of the write stamp's member, for code that handles records as
/// JSON values (a restore drops it: restored content may differ from what
/// the stamp named).
pub const STAMP_FIELD: &str = "_w";

/// The write stamp `bytes` begin with ([`stamped`]): exactly
/// `{"_w":"` + 22 base64url characters + `"` followed by `,` or `}`, as the
/// Redis scripts match it (`^{"_w":"([%w_%-]+)"[,}]` on the first 31 bytes).
pub fn stamp_of(bytes: &[u8]) -> Option<&str> {
    let rest = bytes.strip_prefix(STAMP_OPEN)?;
    let (stamp, after) = rest.split_at_checked(STAMP_LEN)?;
    if !stamp
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return None;
    }
    match after {
        [b'"', b',' | b'}', ..] => std::str::from_utf8(stamp).ok(),
        _ => None,
    }
}

/// The fingerprint [`Store::fingerprint`] answers for `bytes`: `w:` and
/// the write stamp they begin with ([`stamp_of`]), else their lowercase hex
/// SHA-1 ([`sha1_hex`]). The two forms never equal each other.
pub fn fingerprint_of(bytes: &[u8]) -> String {
    match stamp_of(bytes) {
        Some(stamp) => format!("{STAMP_FINGERPRINT}{stamp}"),
        None => sha1_hex(bytes),
    }
}

/// How the fingerprint of a stamped record begins (`w:` and the stamp); a
/// SHA-1 in hex never does.
pub const STAMP_FINGERPRINT: &str = "w:";

/// The lowercase hex SHA-1 of `bytes`, as Redis's `redis.sha1hex` writes it.
pub fn sha1_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The streaming hasher: OpenSSL 3's one-shot `SHA1()` fetches the
    // algorithm by name on every call.
    let mut hasher = openssl::sha::Sha1::new();
    hasher.update(bytes);
    let digest = hasher.finish();
    let mut out = String::with_capacity(40);
    for b in digest {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    out
}

/// The answer of [`Store::get_if_changed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfChanged {
    /// The stored bytes still have the fingerprint the caller gave.
    Unchanged,
    /// Nothing is stored at the key.
    Absent,
    /// The value as read, and the fingerprint of its stored bytes.
    Value {
        /// The value (opened, where the store seals).
        value: Vec<u8>,
        /// The fingerprint of the bytes as stored.
        fingerprint: String,
    },
}

/// How [`Store::read_many`] reads one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The value.
    Value,
    /// Only whether there is one (the value is not transferred).
    Presence,
}

/// Checks that every key of a [`Store::read_many`] shares the first one's
/// hash tag. Names only the tag: key names can be secrets.
pub fn one_tag(keys: &[(&Key, Read)]) -> Result<(), StoreError> {
    match keys.split_first() {
        Some(((first, _), rest)) if rest.iter().any(|(k, _)| k.tag() != first.tag()) => Err(StoreError::Corrupt(
            format!("read_many over keys of several hash tags ({{{}}}, ...)", first.tag()),
        )),
        _ => Ok(()),
    }
}

/// One entry of a stream: its id (`<ms>-<seq>`) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry's id, as the store gave it out.
    pub id: String,
    /// The value appended.
    pub value: Vec<u8>,
}

/// A stream id parsed into its two numbers, or `None` when `id` is not one.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The answer of [`Store::rate_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request is within the limit (and was counted).
    pub allowed: bool,
    /// When refused: how long until one more request would be allowed.
    /// Zero when allowed.
    pub retry_after: Duration,
    /// When allowed: how many more requests the bucket holds right now.
    pub remaining: u64,
}

/// The GCRA step both backends share, in whole milliseconds: from the
/// stored theoretical arrival time `tat` (if any) at `now`, whether the
/// request is allowed and, if so, the new arrival time to store. Pure, so
/// the memory store and the Redis script compute the same thing (the script
/// is its Lua transcription).
pub fn gcra(tat: Option<u64>, now: u64, limit: u64, window_ms: u64) -> (RateDecision, Option<u64>) {
    if limit == 0 {
        let decision = RateDecision {
            allowed: false,
            retry_after: Duration::from_millis(window_ms.max(1)),
            remaining: 0,
        };
        return (decision, None);
    }
    // The emission interval, and the bucket's depth in time.
    let interval = window_ms.div_ceil(limit).max(1);
    let depth = interval.saturating_mul(limit);
    let start = tat.unwrap_or(now).max(now);
    let next = start.saturating_add(interval);
    let ahead = next - now;
    if ahead > depth {
        let decision = RateDecision {
            allowed: false,
            retry_after: Duration::from_millis(ahead - depth),
            remaining: 0,
        };
        return (decision, None);
    }
    let decision = RateDecision {
        allowed: true,
        retry_after: Duration::ZERO,
        remaining: (depth - ahead) / interval,
    };
    (decision, Some(next))
}

/// The answer of [`Store::take_and_mark`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The value was there: it is now gone and the marker written.
    Value(Vec<u8>),
    /// The value was already taken: the marker found in its place.
    Marker(Vec<u8>),
    /// Neither the value nor a marker exists (unknown or expired).
    Absent,
}

/// The store type shared through the application.
pub type SharedStore = Arc<dyn Store>;

/// JSON helpers on top of the byte-level trait.
#[async_trait]
pub trait StoreJson {
    /// Reads and decodes a JSON value.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, StoreError>;
    /// Encodes and writes a JSON value.
    async fn put_json<T: serde::Serialize + Sync>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;
    /// Encodes and writes a JSON value only if the key is absent.
    async fn put_json_if_absent<T: serde::Serialize + Sync>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError>;
    /// Atomically reads, deletes and decodes a JSON value.
    async fn take_json<T: serde::de::DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, StoreError>;
}

fn decode<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl<S: Store + ?Sized> StoreJson for S {
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, StoreError> {
        decode(self.get(key).await?)
    }
    async fn put_json<T: serde::Serialize + Sync>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.put(key, &encode(value)?, ttl).await
    }
    async fn put_json_if_absent<T: serde::Serialize + Sync>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.put_if_absent(key, &encode(value)?, ttl).await
    }
    async fn take_json<T: serde::de::DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, StoreError> {
        decode(self.take(key).await?)
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::{fingerprint_of, sha1_hex, stamp_of, stamped};

    #[test]
    fn a_stamp_is_the_first_member_and_fresh_at_every_write() {
        let body = br#"{"id":"okta","kind":"saml"}"#;
        let (one, two) = (stamped(body), stamped(body));
        let (a, b) = (stamp_of(&one).unwrap(), stamp_of(&two).unwrap());
        assert_ne!(a, b, "each write draws its own stamp");
        assert_eq!(fingerprint_of(&one), format!("w:{a}"));
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(v, serde_json::json!({"_w": a, "id": "okta", "kind": "saml"}));
        assert!(one.starts_with(br#"{"_w":""#) && one.ends_with(&body[1..]));
        // An empty object, with or without white space, stays valid JSON.
        for empty in [&b"{}"[..], b"{ }"] {
            let s = stamped(empty);
            assert!(stamp_of(&s).is_some());
            assert!(serde_json::from_slice::<serde_json::Value>(&s).is_ok(), "{s:?}");
        }
        // Not an object: unchanged, and fingerprinted by its SHA-1.
        assert_eq!(stamped(b"[1]"), b"[1]");
        assert_eq!(fingerprint_of(b"[1]"), sha1_hex(b"[1]"));
    }
}
