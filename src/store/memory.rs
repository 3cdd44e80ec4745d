//! The in-memory store: the embedded default for one process.
//!
//! Expiry follows the injected clock, so TTLs are testable without sleeping.
//! Expired entries are dropped when touched and swept every few hundred writes.

use super::{
    gcra, parse_stream_id, IfChanged, Key, RateDecision, Read, Rotate, Store, StoreError, StreamEntry, Taken, Write,
};
use crate::clock::SharedClock;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Counters are plain bytes holding a decimal number, as in Redis, so a
/// counter reads back with `get` and a numeric value can be counted on.
#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    Set(BTreeSet<String>),
    List(VecDeque<Vec<u8>>),
    Stream(Stream),
}

/// A stream id: milliseconds and sequence number, ordered as Redis orders them.
type StreamId = (u64, u64);

/// A stream as Redis keeps one: entries by id, the last id given out (ids
/// never repeat, even after trimming) and consumer groups.
#[derive(Debug, Clone, Default)]
struct Stream {
    entries: BTreeMap<StreamId, Vec<u8>>,
    last_id: StreamId,
    groups: HashMap<String, Group>,
}

/// A consumer group: the last id given to any consumer and the pending
/// (given, not acknowledged) entries with their consumer and delivery time.
#[derive(Debug, Clone, Default)]
struct Group {
    last_delivered: StreamId,
    pending: BTreeMap<StreamId, (String, DateTime<Utc>)>,
}

fn render_id(id: StreamId) -> String {
    format!("{}-{}", id.0, id.1)
}

fn stream_id_arg(id: &str) -> Result<StreamId, StoreError> {
    parse_stream_id(id).ok_or_else(|| StoreError::Corrupt("not a stream id".to_owned()))
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    writes: u64,
}

/// A process-local store. Not shared between replicas.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: SharedClock,
}

const SWEEP_EVERY: u64 = 512;

impl MemoryStore {
    /// An empty store whose TTLs follow `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }

    /// The instant a value written now with `ttl` expires. A TTL too long to
    /// represent means "never" rather than an overflow panic.
    fn deadline(&self, ttl: Option<Duration>) -> Option<DateTime<Utc>> {
        let ttl = chrono::Duration::from_std(ttl?).ok()?;
        self.clock.now().checked_add_signed(ttl)
    }

    /// Runs `f` on the map with expired entries of `key` already dropped.
    fn with<R>(&self, key: &Key, write: bool, f: impl FnOnce(&mut HashMap<Key, Entry>) -> R) -> R {
        let now = self.clock.now();
        // A poisoned lock only means another task panicked mid-operation; the
        // map itself is still consistent because every operation is one step.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.map.get(key).is_some_and(|e| e.expires.is_some_and(|x| x <= now)) {
            inner.map.remove(key);
        }
        if write {
            inner.writes += 1;
            if inner.writes.is_multiple_of(SWEEP_EVERY) {
                inner.map.retain(|_, e| e.expires.is_none_or(|x| x > now));
            }
        }
        f(&mut inner.map)
    }

    /// [`Self::with`] for an operation over several keys: every one's
    /// expired entry dropped first, all under one lock.
    fn with_keys<R>(&self, keys: &[&Key], f: impl FnOnce(&mut HashMap<Key, Entry>) -> R) -> R {
        let now = self.clock.now();
        let Some((first, rest)) = keys.split_first() else {
            return self.with(&Key::new("", ""), false, f);
        };
        self.with(first, true, |m| {
            for key in rest {
                if m.get(*key).is_some_and(|e| e.expires.is_some_and(|x| x <= now)) {
                    m.remove(*key);
                }
            }
            f(m)
        })
    }
}

/// Adds `member` to the set in `m` at `key` (a wrong type is refused).
/// The TTL extends, never shortens; a set without TTL takes the new one
/// (the same as Redis `PEXPIRE NX` + `PEXPIRE GT`).
fn add_member(
    m: &mut HashMap<Key, Entry>,
    key: &Key,
    member: &str,
    expires: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let entry = m.entry(key.clone()).or_insert_with(|| Entry {
        value: Value::Set(BTreeSet::new()),
        expires,
    });
    match &mut entry.value {
        Value::Set(s) => {
            s.insert(member.to_owned());
        }
        _ => return Err(wrong_type(key)),
    }
    match (expires, entry.expires) {
        (Some(new), Some(old)) if new > old => entry.expires = Some(new),
        (Some(new), None) => entry.expires = Some(new),
        _ => {}
    }
    Ok(())
}

/// Names only the key's tag: key names can be secrets (authorization codes).
fn wrong_type(key: &Key) -> StoreError {
    StoreError::Corrupt(format!("value in {{{}}} has another type", key.tag()))
}

fn not_a_counter(key: &Key) -> StoreError {
    StoreError::Corrupt(format!("value in {{{}}} is not a counter", key.tag()))
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(key, false, |m| match m.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Bytes(b), ..
            }) => Ok(Some(b.clone())),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError> {
        // Read and fingerprinted under one lock, as the Redis script does.
        self.with(key, false, |m| match m.get(key) {
            None => Ok(IfChanged::Absent),
            Some(Entry {
                value: Value::Bytes(b), ..
            }) => {
                let fingerprint = super::fingerprint_of(b);
                if known == Some(fingerprint.as_str()) {
                    Ok(IfChanged::Unchanged)
                } else {
                    Ok(IfChanged::Value {
                        value: b.clone(),
                        fingerprint,
                    })
                }
            }
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn put_then_get(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Option<Duration>,
        read: &Key,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if key.tag() != read.tag() {
            return Err(StoreError::Corrupt(format!(
                "put_then_get over keys of two hash tags ({{{}}}, ...)",
                key.tag()
            )));
        }
        let expires = self.deadline(ttl);
        let now = self.clock.now();
        // Written and read under one lock, as the Redis script does.
        self.with(key, true, |m| {
            m.insert(
                key.clone(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires,
                },
            );
            match m.get(read) {
                Some(e) if e.expires.is_some_and(|x| x <= now) => Ok(None),
                None => Ok(None),
                Some(Entry {
                    value: Value::Bytes(b), ..
                }) => Ok(Some(b.clone())),
                Some(_) => Err(wrong_type(read)),
            }
        })
    }

    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        super::one_tag(keys)?;
        let now = self.clock.now();
        // One lock for every key: the answers are of one moment.
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .map(|(key, how)| match inner.map.get(*key) {
                Some(e) if e.expires.is_some_and(|x| x <= now) => Ok(None),
                None => Ok(None),
                Some(_) if *how == Read::Presence => Ok(Some(Vec::new())),
                Some(Entry {
                    value: Value::Bytes(b), ..
                }) => Ok(Some(b.clone())),
                Some(_) => Err(wrong_type(key)),
            })
            .collect()
    }

    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let expires = self.deadline(ttl);
        self.with(key, true, |m| {
            m.insert(
                key.clone(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires,
                },
            );
            Ok(())
        })
    }

    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        let expires = self.deadline(ttl);
        self.with(key, true, |m| {
            if m.contains_key(key) {
                return Ok(false);
            }
            m.insert(
                key.clone(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires,
                },
            );
            Ok(true)
        })
    }

    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let expires = self.deadline(ttl);
        // Compare and write under one lock: the equivalent of the Redis script.
        self.with(key, true, |m| match m.get(key) {
            None => Ok(false),
            Some(Entry {
                value: Value::Bytes(b), ..
            }) if b.as_slice() == expected => {
                m.insert(
                    key.clone(),
                    Entry {
                        value: Value::Bytes(value.to_vec()),
                        expires,
                    },
                );
                Ok(true)
            }
            Some(Entry {
                value: Value::Bytes(_), ..
            }) => Ok(false),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(key, true, |m| match m.remove(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Bytes(b), ..
            }) => Ok(Some(b)),
            Some(other) => {
                m.insert(key.clone(), other);
                Err(wrong_type(key))
            }
        })
    }

    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError> {
        if key.tag() != marker_key.tag() {
            // Refused like the Redis store does (one slot on Redis Cluster).
            return Err(StoreError::Corrupt(
                "take_and_mark keys must share a hash tag".to_owned(),
            ));
        }
        let now = self.clock.now();
        let expires = self.deadline(Some(marker_ttl));
        // One lock for both keys: the equivalent of the Redis script.
        self.with(key, true, |m| {
            if m.get(marker_key).is_some_and(|e| e.expires.is_some_and(|x| x <= now)) {
                m.remove(marker_key);
            }
            let marker_type_ok = match m.get(marker_key) {
                None => true,
                Some(e) => matches!(e.value, Value::Bytes(_)),
            };
            if !marker_type_ok {
                return Err(wrong_type(marker_key));
            }
            match m.remove(key) {
                Some(Entry {
                    value: Value::Bytes(b), ..
                }) => {
                    m.insert(
                        marker_key.clone(),
                        Entry {
                            value: Value::Bytes(marker_value.to_vec()),
                            expires,
                        },
                    );
                    Ok(Taken::Value(b))
                }
                Some(other) => {
                    m.insert(key.clone(), other);
                    Err(wrong_type(key))
                }
                None => match m.get(marker_key) {
                    Some(Entry {
                        value: Value::Bytes(b), ..
                    }) => Ok(Taken::Marker(b.clone())),
                    _ => Ok(Taken::Absent),
                },
            }
        })
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        self.with(key, true, |m| Ok(m.remove(key).is_some()))
    }

    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        let expires = self.deadline(ttl);
        self.with(key, true, |m| add_member(m, key, member, expires))
    }

    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        self.with(key, true, |m| {
            let empty = match m.get_mut(key) {
                None => return Ok(()),
                Some(Entry {
                    value: Value::Set(s), ..
                }) => {
                    s.remove(member);
                    s.is_empty()
                }
                Some(_) => return Err(wrong_type(key)),
            };
            if empty {
                m.remove(key);
            }
            Ok(())
        })
    }

    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        self.with(key, false, |m| match m.get(key) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Set(s), ..
            }) => Ok(s.iter().cloned().collect()),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn set_sample(&self, key: &Key, count: usize) -> Result<Vec<String>, StoreError> {
        use rand::seq::IteratorRandom;
        self.with(key, false, |m| match m.get(key) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Set(s), ..
            }) => Ok(s.iter().cloned().choose_multiple(&mut rand::rng(), count)),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        let expires = self.deadline(Some(ttl));
        self.with(key, true, |m| {
            let entry = m.entry(key.clone()).or_insert_with(|| Entry {
                value: Value::Bytes(b"0".to_vec()),
                expires,
            });
            let Value::Bytes(bytes) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            let next = std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| not_a_counter(key))?;
            *bytes = next.to_string().into_bytes();
            // The window starts when the counter (or the value) first gets a
            // TTL and is never moved (Redis `PEXPIRE NX`).
            if entry.expires.is_none() {
                entry.expires = expires;
            }
            Ok(next)
        })
    }

    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        self.with(key, true, |m| {
            let entry = m.entry(key.clone()).or_insert_with(|| Entry {
                value: Value::List(VecDeque::new()),
                expires: None,
            });
            let Value::List(list) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            list.push_front(value.to_vec());
            list.truncate(max_len.max(1));
            Ok(())
        })
    }

    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with(key, false, |m| match m.get(key) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::List(list),
                ..
            }) => Ok(list.iter().skip(start).take(count).cloned().collect()),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        let now_ms = u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0);
        self.with(key, true, |m| {
            let entry = m.entry(key.clone()).or_insert_with(|| Entry {
                value: Value::Stream(Stream::default()),
                expires: None,
            });
            let Value::Stream(stream) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            // Like Redis: the clock's millisecond, or the last one with the
            // next sequence number when the clock has not moved past it.
            let id = if now_ms > stream.last_id.0 {
                (now_ms, 0)
            } else {
                (stream.last_id.0, stream.last_id.1.saturating_add(1))
            };
            stream.last_id = id;
            stream.entries.insert(id, value.to_vec());
            while stream.entries.len() > max_len.max(1) {
                stream.entries.pop_first();
            }
            Ok(render_id(id))
        })
    }

    async fn stream_add_classed(
        &self,
        key: &Key,
        class: &Key,
        value: &[u8],
        class_max: usize,
        max_len: usize,
    ) -> Result<String, StoreError> {
        if class.tag() != key.tag() {
            return Err(StoreError::Corrupt(format!(
                "stream_add_classed over keys of two hash tags ({{{}}}, {{{}}})",
                key.tag(),
                class.tag()
            )));
        }
        let now_ms = u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0);
        self.with_keys(&[key, class], |m| {
            // Both types are checked before anything is written.
            if m.get(class).is_some_and(|e| !matches!(e.value, Value::List(_))) {
                return Err(wrong_type(class));
            }
            if m.get(key).is_some_and(|e| !matches!(e.value, Value::Stream(_))) {
                return Err(wrong_type(key));
            }
            let entry = m.entry(key.clone()).or_insert_with(|| Entry {
                value: Value::Stream(Stream::default()),
                expires: None,
            });
            let Value::Stream(stream) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            let id = if now_ms > stream.last_id.0 {
                (now_ms, 0)
            } else {
                (stream.last_id.0, stream.last_id.1.saturating_add(1))
            };
            stream.last_id = id;
            stream.entries.insert(id, value.to_vec());
            while stream.entries.len() > max_len.max(1) {
                stream.entries.pop_first();
            }
            let rendered = render_id(id);
            let mut dropped = Vec::new();
            let list = m.entry(class.clone()).or_insert_with(|| Entry {
                value: Value::List(VecDeque::new()),
                expires: None,
            });
            if let Value::List(list) = &mut list.value {
                list.push_front(rendered.clone().into_bytes());
                while list.len() > class_max.max(1) {
                    if let Some(old) = list.pop_back() {
                        dropped.push(old);
                    }
                }
            }
            if let Some(Entry {
                value: Value::Stream(stream),
                ..
            }) = m.get_mut(key)
            {
                for old in dropped {
                    if let Some(old) = std::str::from_utf8(&old).ok().and_then(|o| stream_id_arg(o).ok()) {
                        stream.entries.remove(&old);
                    }
                }
            }
            Ok(rendered)
        })
    }

    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        let after = after.map(stream_id_arg).transpose()?;
        self.with(key, false, |m| match m.get(key) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Stream(s),
                ..
            }) => Ok(s
                .entries
                .iter()
                .filter(|(id, _)| after.is_none_or(|a| **id > a))
                .take(count)
                .map(|(id, v)| StreamEntry {
                    id: render_id(*id),
                    value: v.clone(),
                })
                .collect()),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let before = before.map(stream_id_arg).transpose()?;
        self.with(key, false, |m| match m.get(key) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Stream(s),
                ..
            }) => Ok(s
                .entries
                .iter()
                .rev()
                .filter(|(id, _)| before.is_none_or(|b| **id < b))
                .take(count)
                .map(|(id, v)| StreamEntry {
                    id: render_id(*id),
                    value: v.clone(),
                })
                .collect()),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        self.with(key, false, |m| match m.get(key) {
            None => Ok(0),
            Some(Entry {
                value: Value::Stream(s),
                ..
            }) => Ok(s.entries.len()),
            Some(_) => Err(wrong_type(key)),
        })
    }

    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        self.with(key, true, |m| {
            let entry = m.entry(key.clone()).or_insert_with(|| Entry {
                value: Value::Stream(Stream::default()),
                expires: None,
            });
            let Value::Stream(stream) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            stream.groups.entry(group.to_owned()).or_default();
            Ok(())
        })
    }

    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let now = self.clock.now();
        self.with(key, true, |m| {
            let Some(Entry {
                value: Value::Stream(stream),
                ..
            }) = m.get_mut(key)
            else {
                return Err(no_group());
            };
            let Some(g) = stream.groups.get_mut(group) else {
                return Err(no_group());
            };
            let mut out = Vec::new();
            for (id, v) in stream
                .entries
                .range((std::ops::Bound::Excluded(g.last_delivered), std::ops::Bound::Unbounded))
            {
                if out.len() >= count {
                    break;
                }
                g.pending.insert(*id, (consumer.to_owned(), now));
                out.push(StreamEntry {
                    id: render_id(*id),
                    value: v.clone(),
                });
            }
            if let Some(last) = out.last().and_then(|e| parse_stream_id(&e.id)) {
                g.last_delivered = last;
            }
            Ok(out)
        })
    }

    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        let id = stream_id_arg(id)?;
        self.with(key, true, |m| match m.get_mut(key) {
            Some(Entry {
                value: Value::Stream(s),
                ..
            }) => Ok(s.groups.get_mut(group).is_some_and(|g| g.pending.remove(&id).is_some())),
            Some(_) => Err(wrong_type(key)),
            None => Ok(false),
        })
    }

    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let now = self.clock.now();
        let min_idle = chrono::Duration::from_std(min_idle).unwrap_or(chrono::Duration::MAX);
        self.with(key, true, |m| {
            let Some(Entry {
                value: Value::Stream(stream),
                ..
            }) = m.get_mut(key)
            else {
                return Err(no_group());
            };
            let Some(g) = stream.groups.get_mut(group) else {
                return Err(no_group());
            };
            let mut out = Vec::new();
            let mut gone = Vec::new();
            for (id, (owner, at)) in g.pending.iter_mut() {
                if out.len() >= count {
                    break;
                }
                if now.signed_duration_since(*at) < min_idle {
                    continue;
                }
                match stream.entries.get(id) {
                    Some(v) => {
                        *owner = consumer.to_owned();
                        *at = now;
                        out.push(StreamEntry {
                            id: render_id(*id),
                            value: v.clone(),
                        });
                    }
                    None => gone.push(*id),
                }
            }
            for id in gone {
                g.pending.remove(&id);
            }
            Ok(out)
        })
    }

    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        let now_dt = self.clock.now();
        // Milliseconds since the epoch on the injected clock (never before it).
        let now = u64::try_from(now_dt.timestamp_millis()).unwrap_or(0);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        // Read, decide and write under one lock: the equivalent of the Redis script.
        self.with(key, true, |m| {
            let tat = match m.get(key) {
                None => None,
                Some(Entry {
                    value: Value::Bytes(b), ..
                }) => Some(
                    std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| not_a_counter(key))?,
                ),
                Some(_) => return Err(wrong_type(key)),
            };
            let (decision, next) = gcra(tat, now, limit, window_ms);
            if let Some(next) = next {
                let ttl = chrono::Duration::milliseconds(i64::try_from(next - now).unwrap_or(i64::MAX).max(1));
                m.insert(
                    key.clone(),
                    Entry {
                        value: Value::Bytes(next.to_string().into_bytes()),
                        expires: now_dt.checked_add_signed(ttl),
                    },
                );
            }
            Ok(decision)
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn read_many_if_changed(&self, keys: &[(&Key, super::Probe<'_>)]) -> Result<Vec<super::Probed>, StoreError> {
        use super::{Probe, Probed};
        super::one_tag_probed(keys)?;
        let now = self.clock.now();
        // One lock for every key: the answers are of one moment, as the
        // Redis script's.
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .map(|(key, probe)| {
                let entry = inner.map.get(*key).filter(|e| e.expires.is_none_or(|x| x > now));
                match (probe, entry) {
                    (Probe::Presence, e) => Ok(Probed::Present(e.is_some())),
                    (Probe::Members, None) => Ok(Probed::Members(Vec::new())),
                    (
                        Probe::Members,
                        Some(Entry {
                            value: Value::Set(s), ..
                        }),
                    ) => Ok(Probed::Members(s.iter().cloned().collect())),
                    (Probe::IfChanged(_), None) => Ok(Probed::Read(IfChanged::Absent)),
                    (
                        Probe::IfChanged(known),
                        Some(Entry {
                            value: Value::Bytes(b), ..
                        }),
                    ) => {
                        let fingerprint = super::fingerprint_of(b);
                        Ok(Probed::Read(if *known == Some(fingerprint.as_str()) {
                            IfChanged::Unchanged
                        } else {
                            IfChanged::Value {
                                value: b.clone(),
                                fingerprint,
                            }
                        }))
                    }
                    (_, Some(_)) => Err(wrong_type(key)),
                }
            })
            .collect()
    }

    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError> {
        super::one_write_tag(writes)?;
        let keys: Vec<&Key> = writes.iter().map(Write::key).collect();
        let deadlines: Vec<Option<DateTime<Utc>>> = writes
            .iter()
            .map(|w| match w {
                Write::Put { ttl, .. } | Write::SetAdd { ttl, .. } => self.deadline(*ttl),
                Write::Delete { .. } | Write::RequireAbsent { .. } | Write::RequireValue { .. } => None,
            })
            .collect();
        // One lock for every key: the equivalent of the Redis script, which
        // checks the set types and the conditions before it writes anything.
        self.with_keys(&keys, |m| {
            for w in writes {
                match w {
                    Write::SetAdd { key, .. } if m.get(*key).is_some_and(|e| !matches!(e.value, Value::Set(_))) => {
                        return Err(wrong_type(key));
                    }
                    Write::RequireAbsent { key } if m.get(*key).is_some() => return Ok(false),
                    Write::RequireValue { key, value }
                        if !matches!(m.get(*key), Some(Entry { value: Value::Bytes(b), .. }) if b == value) =>
                    {
                        return Ok(false)
                    }
                    _ => {}
                }
            }
            for (w, expires) in writes.iter().zip(deadlines) {
                match w {
                    Write::Put { key, value, .. } => {
                        m.insert(
                            (*key).clone(),
                            Entry {
                                value: Value::Bytes(value.to_vec()),
                                expires,
                            },
                        );
                    }
                    Write::SetAdd { key, member, .. } => add_member(m, key, member, expires)?,
                    Write::Delete { key } => {
                        m.remove(*key);
                    }
                    Write::RequireAbsent { .. } | Write::RequireValue { .. } => {}
                }
            }
            Ok(true)
        })
    }

    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        let now = self.clock.now();
        // One lock for the pointer and what it names: the equivalent of
        // the Redis script.
        self.with(pointer, false, |m| {
            let value = match m.get(pointer) {
                None => return Ok(None),
                Some(Entry {
                    value: Value::Bytes(b), ..
                }) => b.clone(),
                Some(_) => return Err(wrong_type(pointer)),
            };
            let keys = super::through_keys(pointer, &value, reads)?;
            let mut out = Vec::with_capacity(keys.len());
            for (key, (_, how)) in keys.iter().zip(reads) {
                let live = m.get(key).filter(|e| e.expires.is_none_or(|x| x > now));
                out.push(match (live, how) {
                    (None, _) => None,
                    (Some(_), Read::Presence) => Some(Vec::new()),
                    (
                        Some(Entry {
                            value: Value::Bytes(b), ..
                        }),
                        Read::Value,
                    ) => Some(b.clone()),
                    (Some(_), Read::Value) => return Err(wrong_type(key)),
                });
            }
            Ok(Some((value, out)))
        })
    }

    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError> {
        r.one_tag()?;
        let marker_expires = self.deadline(Some(r.marker_ttl));
        let next_expires = self.deadline(r.next_ttl);
        // One lock for every key: the equivalent of the Redis script.
        self.with_keys(&[r.key, r.marker_key, r.requires, r.next_key], |m| {
            if !m.contains_key(r.requires) {
                return Ok(Taken::Absent);
            }
            if m.get(r.marker_key).is_some_and(|e| !matches!(e.value, Value::Bytes(_))) {
                return Err(wrong_type(r.marker_key));
            }
            match m.remove(r.key) {
                Some(Entry {
                    value: Value::Bytes(b), ..
                }) => {
                    m.insert(
                        r.marker_key.clone(),
                        Entry {
                            value: Value::Bytes(r.marker_value.to_vec()),
                            expires: marker_expires,
                        },
                    );
                    m.insert(
                        r.next_key.clone(),
                        Entry {
                            value: Value::Bytes(r.next_value.to_vec()),
                            expires: next_expires,
                        },
                    );
                    Ok(Taken::Value(b))
                }
                Some(other) => {
                    m.insert(r.key.clone(), other);
                    Err(wrong_type(r.key))
                }
                None => match m.get(r.marker_key) {
                    Some(Entry {
                        value: Value::Bytes(b), ..
                    }) => Ok(Taken::Marker(b.clone())),
                    _ => Ok(Taken::Absent),
                },
            }
        })
    }
}

/// Reading through a group that does not exist (Redis answers NOGROUP).
fn no_group() -> StoreError {
    StoreError::Corrupt("no such consumer group".to_owned())
}
