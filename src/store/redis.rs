//! The Redis store, for production and any number of replicas.
//!
//! One [`RedisStore`] serves every topology the URL can name
//! ([`Topology`]): a single server (`redis://`, `rediss://`), a primary found
//! through Sentinels, or a Redis Cluster. Each operation is written once, as
//! one command or one Lua script over keys of one hash tag, and sent through
//! [`Conn`], which knows how to reach the right node:
//!
//! * single: one [`ConnectionManager`] (a multiplexed RESP3 connection that
//!   reconnects by itself, also while idle, when the server goes away);
//! * Sentinel: the same, to the primary the Sentinels name; a connection
//!   error or a `READONLY` answer makes the store ask the Sentinels again and
//!   move to the new primary after a failover;
//! * cluster: the `redis` crate's cluster connection (slot map, MOVED/ASK).
//!
//! Every operation runs under a hard deadline, so a Redis that is gone or
//! frozen turns into [`StoreError::Unavailable`] within about two seconds
//! instead of a hung request: `/readyz` and every login depend on that.
//!
//! **Recovery.** A connection that went stale while Redis restarted (or a
//! primary that moved) must not fail the first request after recovery.
//! Connections speak RESP3, so the connection manager hears a disconnect
//! at once, even while idle, and reconnects in the background; a request
//! that still finds no connection fails with "connection refused" before
//! anything was sent. An operation whose failure says the command was not
//! executed (connection refused, `READONLY`, `MASTERDOWN`, `TRYAGAIN`,
//! `CLUSTERDOWN`, `LOADING`) is retried once, within the same deadline. An
//! operation that is safe to repeat (reads, `put`, `delete`, `set_add`,
//! `set_remove`, `ping`) is also retried after an I/O error or timeout
//! whose outcome is unknown. A take (`take`, `take_and_mark`),
//! `put_if_absent`, `compare_and_put`, `incr` and `list_push_capped` are not
//! retried after an unknown outcome: the first attempt may have consumed or
//! written the value, and a retry would report a single use as a reuse
//! (revoking a family), a won race as lost, or count and log twice. (On a cluster the
//! cluster client also retries by itself after connection errors and
//! redirections; a take repeated there finds the marker or nothing: it fails
//! closed, never twice.)
//!
//! **Replication.** With `wait_replicas > 0` (the default on Sentinel and
//! cluster), every write except `incr` is followed by `WAIT` on the same
//! connection, so it returns once that many replicas hold it (or the wait
//! times out, which is logged as `store.replication_unconfirmed` and does
//! not fail the write: the primary has it, and a primary without a live
//! replica cannot fail over to one anyway; `WAIT` blocks the multiplexed
//! connection, so after a timeout writes skip it for five seconds rather
//! than stall every request behind a missing replica). A failover then loses no
//! completed sign-in, refresh rotation, reuse marker or configuration change
//! that Redis acknowledged. Counters (`incr`: login-attempt windows, rate
//! limits) do not wait: losing one resets a short window and nothing more.
//!
//! Each operation touches one key or keys of one hash tag (`take_and_mark`
//! checks it), so the store is safe on Redis Cluster. Requires Redis 7
//! (`PEXPIRE ... NX | GT`), checked at start-up on every primary.

use super::redis_batch::{self, Batch};
use super::redis_url::{addr, Auth, Topology};
use super::{
    parse_stream_id, IfChanged, Key, RateDecision, Read, Rotate, Store, StoreError, StreamEntry, Taken, Write,
};
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ErrorKind, ProtocolVersion, RedisError, ServerErrorKind, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the server may take to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The hard bound on one store operation, including waiting for a
/// reconnect, a new primary, a retry and `WAIT`.
const OPERATION_DEADLINE: Duration = Duration::from_millis(2000);
/// How far ahead [`TimerFloor`] keeps a timer: less than the shortest
/// deadline every operation arms ([`RESPONSE_TIMEOUT`]).
const TIMER_FLOOR: Duration = Duration::from_millis(500);
/// Reconnect attempts per reconnect cycle; a failed cycle fails the waiting
/// commands and the next command starts a new cycle, so few retries keep
/// failures fast without ever giving up for good.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// Retries of the cluster client itself (redirections, reconnects).
const CLUSTER_RETRIES: u32 = 3;
/// Redis rejects expiry times that overflow its clock; anything this long is
/// "practically forever" anyway (about 73 million years).
const MAX_TTL_MS: u64 = (i64::MAX / 4) as u64;
/// The default bound on one `WAIT`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(100);
/// After a `WAIT` that timed out, writes skip `WAIT` this long: `WAIT`
/// blocks the multiplexed connection it runs on, so waiting on every write
/// for a replica that is gone would stall every request behind it.
const WAIT_BACKOFF: Duration = Duration::from_secs(5);

/// `take_and_mark`: GETDEL the value; if it was there, SET the marker (with
/// its TTL) in the same script, so no client ever sees the value gone and the
/// marker missing. Answers `{1, value}`, `{2, marker}` or `{0}`.
static TAKE_AND_MARK: Script = Script::new(
    r"
local v = redis.call('GETDEL', KEYS[1])
if v then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {1, v}
end
local m = redis.call('GET', KEYS[2])
if m then
  return {2, m}
end
return {0}
",
);

/// `compare_and_put`: GET the value and SET the new one only if it equals
/// the expected bytes (Lua compares strings byte for byte), with `PX` when a
/// TTL is given (`ARGV[3]` is `1`). An absent key never matches; a value of
/// another type fails with WRONGTYPE. Answers 1 when written, 0 otherwise.
static COMPARE_AND_PUT: Script = Script::new(
    r"
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then
  return 0
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
",
);

/// `set_add`: SADD, then (when `ARGV[2]` is a TTL) give a set without TTL
/// its first one (NX) and extend an existing TTL but never shorten it (GT;
/// GT alone would skip a set without TTL: Redis treats it as infinite). A
/// script, so a WRONGTYPE stops it before any expiry is touched.
static SET_ADD: Script = Script::new(
    r"
redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
end
return 1
",
);

/// `incr`: INCR and give a new counter its window (PEXPIRE NX).
static INCR: Script = Script::new(
    r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
return n
",
);

/// `list_push_capped`: LPUSH and LTRIM in one step, so no reader ever sees
/// the list longer than its bound.
static LIST_PUSH_CAPPED: Script = Script::new(
    r"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, ARGV[2])
return 1
",
);

/// `stream_add_classed`: XADD (trimmed to the stream's bound), the new id
/// pushed on its class's list, and the class's oldest ids beyond its bound
/// popped and XDEL'd, in one step: no reader sees one class crowd out
/// another. Answers the new id. The class list's type is checked first: an
/// error after XADD would leave the entry in without its class.
static STREAM_ADD_CLASSED: Script = Script::new(
    r"
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'none' and t ~= 'list' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', ARGV[4], ARGV[1])
redis.call('LPUSH', KEYS[2], id)
local over = redis.call('LLEN', KEYS[2]) - tonumber(ARGV[2])
while over > 0 do
  local old = redis.call('RPOP', KEYS[2])
  redis.call('XDEL', KEYS[1], old)
  over = over - 1
end
return id
",
);

/// PEM files for TLS to Redis (`rediss://`, `rediss+sentinel://`,
/// `rediss+cluster://`). Without a CA, the system's roots are trusted.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA certificate(s), PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain, PEM (with `client_key_pem`).
    pub client_cert_pem: Option<Vec<u8>>,
    /// Client private key, PEM (with `client_cert_pem`).
    pub client_key_pem: Option<Vec<u8>>,
}

/// How to reach Redis and how writes are made durable.
#[derive(Clone)]
pub struct RedisOptions {
    /// The Redis URL (see [`Topology::parse`]); a secret.
    pub url: String,
    /// The prefix every key is rendered under.
    pub prefix: String,
    /// TLS material.
    pub tls: RedisTls,
    /// Replicas each write waits for (`WAIT`); `None`: 1 on Sentinel and
    /// cluster, 0 on a single server.
    pub wait_replicas: Option<u32>,
    /// How long one `WAIT` may take.
    pub wait_timeout: Duration,
}

impl std::fmt::Debug for RedisOptions {
    // The URL may carry a password and the TLS material a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("prefix", &self.prefix)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisOptions {
    /// Options for `url` under `prefix` with every default.
    pub fn new(url: &str, prefix: &str) -> RedisOptions {
        RedisOptions {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            tls: RedisTls::default(),
            wait_replicas: None,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

/// The connection to whichever node holds a key.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager, Arc<Batch>),
    Sentinel(Arc<SentinelConn>),
    Cluster(ClusterConnection),
}

/// The primary the Sentinels named last, and how to ask them again.
struct SentinelConn {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: tokio::sync::RwLock<Primary>,
    /// Bumped on every move to a new primary, so of many requests that
    /// failed on the old one only the first asks the Sentinels.
    generation: AtomicU64,
    config: ConnectionManagerConfig,
    /// Commands waiting to be sent to the primary together.
    batch: Batch,
}

struct Primary {
    addr: redis::ConnectionAddr,
    conn: ConnectionManager,
}

/// Which failures an operation may be repeated after.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only when the command was certainly not executed.
    IfNotExecuted,
    /// Also after an I/O error of unknown outcome: repeating it is harmless.
    Idempotent,
}

/// Whether a write waits for replicas.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// A read, or a write whose loss costs nothing (counters).
    None,
    /// `WAIT` for the configured replicas.
    Replicated,
}

/// The fingerprint of a stored value in Lua ([`super::fingerprint_of`]):
/// `fp(key, known)` answers `w:` and the write stamp the value begins with,
/// else its SHA-1 (`redis.sha1hex`), with the value when it was read for
/// that; `nil` when absent. Where the caller last saw the record stamped
/// (`known` a stamp's fingerprint) or saw nothing yet, the first 31 bytes
/// are read first (`GETRANGE`: for a stamped record the rest is neither
/// read nor hashed); where it last saw the record unstamped, the value is
/// read at once (no `GETRANGE` that would find nothing) and still checked
/// for a stamp. Either way the answer depends on the stored bytes alone. A
/// macro, so each script is one literal.
macro_rules! fingerprint_lua {
    () => {
        r#"
local function stamp(b)
  local s = string.match(b, '^{"_w":"([%w_%-]+)"[,}]')
  if s and #s == 22 then
    return 'w:' .. s
  end
  return nil
end
local function fp(k, known)
  if not known or known == '' or string.sub(known, 1, 2) == 'w:' then
    local w = stamp(redis.call('GETRANGE', k, 0, 30))
    if w then
      return w, nil
    end
  end
  local v = redis.call('GET', k)
  if not v then
    return nil, nil
  end
  return stamp(v) or redis.sha1hex(v), v
end
"#
    };
}

/// `fingerprint`: the value's fingerprint (`fp`), computed on the server so
/// the value is not sent; nil when absent.
static FINGERPRINT: Script = Script::new(concat!(
    fingerprint_lua!(),
    r"
local f = fp(KEYS[1], nil)
if not f then
  return false
end
return f
"
));

/// `get_if_changed`: the value's fingerprint (`fp`); when it is `ARGV[1]`
/// (the caller's), only `{0}`, else `{1, value, fingerprint}`; nil when
/// absent. One script, so the value and the fingerprint answered are of
/// the same bytes.
static GET_IF_CHANGED: Script = Script::new(concat!(
    fingerprint_lua!(),
    r"
local f, v = fp(KEYS[1], ARGV[1])
if not f then
  return false
end
if f == ARGV[1] then
  return {0}
end
return {1, v or redis.call('GET', KEYS[1]), f}
"
));

/// `put_then_get`: `SET` the first key (with `PX` when `ARGV[2]` is not
/// `0`), then `GET` the second, in one script. Keys of one hash tag.
static PUT_THEN_GET: Script = Script::new(
    r"
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return redis.call('GET', KEYS[2])
",
);

/// `read_many`: per key, `GET` (`ARGV[i]` is `v`) or `EXISTS`; one array
/// in the order asked (nil for an absent value, 0/1 for presence). Keys of
/// one hash tag (checked before it is sent).
static READ_MANY: Script = Script::new(
    r"
local out = {}
for i, k in ipairs(KEYS) do
  if ARGV[i] == 'v' then
    out[i] = redis.call('GET', k)
  else
    out[i] = redis.call('EXISTS', k)
  end
end
return out
",
);

/// `read_many_if_changed`: per key, as `ARGV[i]` says: `c<fingerprint>`
/// re-validates a value as `get_if_changed` does (nil when absent, `0` when
/// its fingerprint (`fp`) is the one given, else `{value, fingerprint}`), `e` answers
/// `EXISTS`, `m` the set's members. One array in the order asked. Keys of
/// one hash tag (checked before it is sent).
static READ_MANY_IF_CHANGED: Script = Script::new(concat!(
    fingerprint_lua!(),
    r"
local out = {}
for i, k in ipairs(KEYS) do
  local how = ARGV[i]
  local kind = string.sub(how, 1, 1)
  if kind == 'e' then
    out[i] = redis.call('EXISTS', k)
  elseif kind == 'm' then
    out[i] = redis.call('SMEMBERS', k)
  else
    local known = string.sub(how, 2)
    local f, v = fp(k, known)
    if not f then
      out[i] = false
    elseif f == known then
      out[i] = 0
    else
      out[i] = {v or redis.call('GET', k), f}
    end
  end
end
return out
"
));

/// The GCRA step of [`super::gcra`] in Lua, on the Redis server's clock
/// (`TIME`, one clock for every replica, read once per script), in whole
/// milliseconds: `step(key, limit)` over the window `window` (at least 1
/// for the limit). A refused request writes nothing. Answers three values,
/// `allowed (0|1), retry_after_ms, remaining` (values, not a table: a table
/// per step cost Redis about 3,000 instructions), or `nil` when the stored
/// value is not a number (an error about the data, which each script
/// reports). A macro, so the scripts below are each one literal.
macro_rules! gcra_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function step(key, limit, window)
  local interval = math.max(math.ceil(window / limit), 1)
  local depth = interval * limit
  local start = now
  local v = redis.call('GET', key)
  if v then
    local tat = tonumber(v)
    if not tat then
      return nil
    end
    if tat > now then
      start = tat
    end
  end
  local next = start + interval
  local ahead = next - now
  if ahead > depth then
    return 0, ahead - depth, 0
  end
  redis.call('SET', key, string.format('%.0f', next), 'PX', string.format('%.0f', math.max(ahead, 1)))
  return 1, 0, math.floor((depth - ahead) / interval)
end
local function clash()
  return redis.error_reply('ERR value is not an integer')
end
"
    };
}

/// `rate_limit`: the GCRA step on `KEYS[1]`, limit `ARGV[1]`, window
/// `ARGV[2]`. Answers `{allowed (0|1), retry_after_ms, remaining}`.
static RATE_LIMIT: Script = Script::new(concat!(
    gcra_lua!(),
    r"
local a, r, m = step(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if not a then
  return clash()
end
return {a, r, m}
"
));

/// `rate_limit_chain` and `rate_limit_guarded`: the GCRA step on each
/// limit's key in turn until one refuses, over the window `ARGV[2]`, the
/// limits from `ARGV[3]` on. With a guard (`ARGV[1]` a fingerprint, not
/// empty), `KEYS[1]` is the guarded record and the limits' keys follow: the
/// steps run only while its stored bytes have that fingerprint
/// (`fp`, as [`GET_IF_CHANGED`]). Answers `{0}` (nothing
/// counted) when the guard does not hold, else `{1}` followed by each
/// step's `allowed, retry, remaining`. The keys belong to different hash
/// tags: only for a single server or Sentinel, never a cluster.
static RATE_LIMIT_STEPS: Script = Script::new(concat!(
    gcra_lua!(),
    fingerprint_lua!(),
    r"
local first = 1
if ARGV[1] ~= '' then
  if fp(KEYS[1], ARGV[1]) ~= ARGV[1] then
    return {0}
  end
  first = 2
end
local window = tonumber(ARGV[2])
local out = {1}
local n = 1
for i = first, #KEYS do
  local a, r, m = step(KEYS[i], tonumber(ARGV[i - first + 3]), window)
  if not a then
    return clash()
  end
  out[n + 1], out[n + 2], out[n + 3] = a, r, m
  n = n + 3
  if a == 0 then
    return out
  end
end
return out
"
));

/// A [`Store`] on a Redis server (7.0 or later).
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    topology: &'static str,
    prefix: String,
    wait_replicas: u32,
    wait_timeout: Duration,
    /// Until when writes skip `WAIT` (after one timed out).
    wait_paused_until: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Ticks while any clone of this store is alive.
    _timer_floor: Arc<TimerFloor>,
}

/// A timer kept at most [`TIMER_FLOOR`] ahead on the runtime, so that the
/// deadlines store operations arm never wake its I/O driver.
///
/// Each operation arms two timers, its deadline ([`OPERATION_DEADLINE`]) and
/// the `redis` crate's response timeout ([`RESPONSE_TIMEOUT`]). Tokio wakes
/// the I/O driver (an `eventfd` write, and one more event for the next
/// `epoll_wait`) whenever a timer is armed earlier than the wake it planned
/// when a worker last parked on the driver. The worker arming it is running,
/// so that wake is wasted, and with few requests in flight it came on
/// nearly every store round trip: 16 `write`s per SAML sign-in at one
/// request at a time (`perf stat`, `docs/performance-log.md`, twenty-second
/// pass). With this timer ticking, the planned wake is never more than
/// [`TIMER_FLOOR`] away, earlier than any deadline an operation arms, so
/// arming one wakes nothing; the ticks themselves are two wake-ups a second.
/// Timers are still exact: tokio fires each when due whatever wakes it.
struct TimerFloor(tokio::task::AbortHandle);

impl TimerFloor {
    fn start() -> TimerFloor {
        let ticking = tokio::spawn(async {
            let mut tick = tokio::time::interval(TIMER_FLOOR);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
            }
        });
        TimerFloor(ticking.abort_handle())
    }
}

impl Drop for TimerFloor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for RedisStore {
    // The connection info may carry a password, so only the prefix is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("topology", &self.topology)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str) -> StoreError {
    StoreError::Unavailable(what.to_owned())
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
}

fn certificates(tls: &RedisTls) -> Result<redis::TlsCertificates, StoreError> {
    let client_tls = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        (None, None) => None,
        _ => {
            return Err(unavailable(
                "a Redis client certificate needs its key, and a key its certificate",
            ))
        }
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert: tls.ca_pem.clone(),
    })
}

fn has_tls_files(tls: &RedisTls) -> bool {
    tls.ca_pem.is_some() || tls.client_cert_pem.is_some() || tls.client_key_pem.is_some()
}

impl RedisStore {
    /// Connects to the Redis at `url` (any form [`Topology::parse`] reads)
    /// with default options and renders every key under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        Self::connect_with(&RedisOptions::new(url, prefix)).await
    }

    /// Connects as `options` say, and checks that every primary runs Redis 7.
    ///
    /// Fails with [`StoreError::Unavailable`] when the URL is invalid or
    /// Redis cannot be reached within the deadline, so a misconfigured
    /// gateway stops at start-up rather than at the first login. Errors never
    /// repeat the URL (it may hold a password).
    pub async fn connect_with(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let topology =
            Topology::parse(&options.url).map_err(|e| StoreError::Unavailable(format!("the Redis URL {e}")))?;
        if has_tls_files(&options.tls) && !topology.tls() {
            return Err(unavailable(
                "Redis TLS files are configured but the Redis URL is not rediss:// (or rediss+sentinel://, rediss+cluster://)",
            ));
        }
        if topology.tls() {
            // The redis crate builds its rustls configuration from the
            // process default provider: make sure it is ours (OpenSSL).
            crate::tls::install_default_provider();
        }
        let certs = certificates(&options.tls)?;
        let deadline = Instant::now() + CONNECT_TIMEOUT * 3;
        let conn = match &topology {
            Topology::Single { url, tls } => {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|_| unavailable("invalid Redis URL"))?;
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                let info = info.set_redis_settings(settings);
                let client = if *tls && has_tls_files(&options.tls) {
                    redis::Client::build_with_tls(info, certs)
                } else {
                    redis::Client::open(info)
                }
                .map_err(|e| map_error(&e))?;
                let manager =
                    bounded_until(deadline, ConnectionManager::new_with_config(client, manager_config())).await?;
                Conn::Single(manager, Arc::default())
            }
            Topology::Sentinel {
                sentinels,
                master,
                auth,
                sentinel_auth,
                tls,
            } => {
                let client = sentinel_client(sentinels, master, auth, sentinel_auth, *tls, &options.tls, certs)?;
                Conn::Sentinel(Arc::new(SentinelConn::connect(client, deadline).await?))
            }
            Topology::Cluster { nodes, auth, tls } => {
                let infos: Vec<redis::ConnectionAddr> = nodes.iter().map(|(h, p)| addr(h, *p, *tls)).collect();
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(50)
                    .max_retry_wait(300);
                if let Some(user) = &auth.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &auth.password {
                    builder = builder.password(password);
                }
                if *tls {
                    builder = builder.tls(redis::TlsMode::Secure);
                    if has_tls_files(&options.tls) {
                        builder = builder.certs(certs);
                    }
                }
                let client = builder.build().map_err(|e| map_error(&e))?;
                Conn::Cluster(bounded_until(deadline, client.get_async_connection()).await?)
            }
        };
        let wait_replicas = options.wait_replicas.unwrap_or(match topology {
            Topology::Single { .. } => 0,
            Topology::Sentinel { .. } | Topology::Cluster { .. } => 1,
        });
        let store = RedisStore {
            conn,
            topology: topology.kind(),
            prefix: options.prefix.clone(),
            wait_replicas,
            wait_timeout: options.wait_timeout,
            wait_paused_until: Arc::new(std::sync::Mutex::new(None)),
            _timer_floor: Arc::new(TimerFloor::start()),
        };
        store.check_version().await?;
        tracing::info!(
            reason = "store.redis_connected",
            topology = store.topology,
            tls = topology.tls(),
            wait_replicas,
            "connected to Redis"
        );
        Ok(store)
    }

    /// `set_add` and `incr` need `PEXPIRE ... NX | GT` (Redis 7): refuse an
    /// older server now rather than fail every login later. On a cluster,
    /// `INFO` goes to every node and each answer is checked. A server that
    /// does not say (INFO restricted, a compatible product) is given the
    /// benefit of the doubt.
    async fn check_version(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info = match self.send(&cmd, Retry::Idempotent).await {
            Ok(info) => info,
            Err(e) if e.code() == Some("NOPERM") => return Ok(()),
            Err(e) => return Err(map_error(&e)),
        };
        let mut texts = Vec::new();
        collect_texts(&info, &mut texts);
        for text in texts {
            if let Some(major) = major_version(&text) {
                if major < 7 {
                    return Err(StoreError::Unavailable(format!(
                        "Redis {major} is too old: Portcullis needs Redis 7 or later"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The prefix every key is rendered under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        self.topology
    }

    /// How many replicas each durable write waits for.
    pub fn wait_replicas(&self) -> u32 {
        self.wait_replicas
    }

    fn key(&self, key: &Key) -> String {
        key.render(&self.prefix)
    }

    /// Runs one command that is not a durable write (reads, counters), under
    /// the deadline, retried once when it certainly was not executed. For
    /// new single-key operations: build the command with keys of one tag.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.query(cmd, Retry::IfNotExecuted, Durability::None).await
    }

    /// Runs one command under the deadline with the given retry class, and
    /// `WAIT`s after it when it is a durable write.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        retry: Retry,
        durability: Durability,
    ) -> Result<T, StoreError> {
        let value = if durability == Durability::Replicated && self.wait_replicas > 0 && !self.wait_paused() {
            self.write_and_wait(cmd, retry).await?
        } else {
            self.bounded(self.send(cmd, retry)).await?
        };
        redis::from_redis_value(value).map_err(|e| {
            tracing::warn!(reason = "store.redis_corrupt", error = %e, "Redis answer does not fit the operation");
            StoreError::Corrupt(e.to_string())
        })
    }

    /// Runs a Lua script over `keys` (all of one hash tag) with `args`.
    /// Sent by its SHA-1 (`EVALSHA`, 40 bytes instead of the script text,
    /// which Redis would hash again on every call); a server that does not
    /// know the script yet (first use, a restart, a failover to a replica
    /// that never ran it) answers `NOSCRIPT` without running anything, and
    /// the script text is sent then (`EVAL`, which also caches it). So the
    /// fallback is safe for every operation, consuming ones included.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &'static Script,
        keys: &[String],
        args: &[&[u8]],
        retry: Retry,
        durability: Durability,
    ) -> Result<T, StoreError> {
        let build = |verb: &str, body: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body).arg(keys.len()).arg(keys);
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        match self.query(&build("EVALSHA", script.sha()), retry, durability).await {
            Err(StoreError::Unavailable(e)) if is_noscript(&e) => {
                tracing::debug!(
                    reason = "store.script_loaded",
                    "Redis did not know a script yet; sent with its text"
                );
                self.query(&build("EVAL", script.text), retry, durability).await
            }
            other => other,
        }
    }

    /// The write, then `WAIT` on the same connection (a pipeline of two:
    /// on a cluster it is routed by the write's key). Answers the write's
    /// value; too few acknowledgements are logged, not failed.
    async fn write_and_wait(&self, cmd: &redis::Cmd, retry: Retry) -> Result<Value, StoreError> {
        let timeout_ms = u64::try_from(self.wait_timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(timeout_ms);
        let answers = self.bounded(self.send_pipe(&pipe, retry)).await?;
        let mut answers = answers.into_iter();
        let value = answers.next().ok_or_else(|| unavailable("Redis answered nothing"))?;
        if let Value::ServerError(e) = &value {
            return Err(map_error(&RedisError::from(e.clone())));
        }
        match answers.next() {
            Some(Value::Int(acks)) if acks >= i64::from(self.wait_replicas) => {}
            other => {
                let acks = match other {
                    Some(Value::Int(n)) => n,
                    _ => -1,
                };
                tracing::warn!(
                    reason = "store.replication_unconfirmed",
                    wanted = self.wait_replicas,
                    acknowledged = acks,
                    "a write was not confirmed by the wanted replicas in time; it is on the primary; \
                     writes do not wait for replicas for the next few seconds"
                );
                if let Ok(mut until) = self.wait_paused_until.lock() {
                    *until = Some(Instant::now() + WAIT_BACKOFF);
                }
            }
        }
        Ok(value)
    }

    /// [`RATE_LIMIT_STEPS`]: the limits counted in turn (each at least 1),
    /// under `guard` if any; `None` when the guard did not hold (nothing
    /// counted). A counter: not retried after an unknown outcome, no `WAIT`
    /// (as `rate_limit`). Single server or Sentinel only.
    async fn gcra_steps(
        &self,
        guard: Option<(&Key, &str)>,
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        let keys: Vec<String> = guard
            .map(|(key, _)| key)
            .into_iter()
            .chain(limits.iter().map(|(key, _)| *key))
            .map(|key| self.key(key))
            .collect();
        let fingerprint = guard.map_or("", |(_, f)| f);
        let window_ms = ttl_ms(window).to_string();
        let limit_args: Vec<String> = limits.iter().map(|(_, limit)| limit.to_string()).collect();
        let mut args: Vec<&[u8]> = vec![fingerprint.as_bytes(), window_ms.as_bytes()];
        args.extend(limit_args.iter().map(|a| a.as_bytes()));
        let answer: Vec<i64> = self
            .eval(&RATE_LIMIT_STEPS, &keys, &args, Retry::IfNotExecuted, Durability::None)
            .await?;
        let Some((&held, steps)) = answer.split_first() else {
            return Err(StoreError::Corrupt("rate limit answered nothing".into()));
        };
        if held == 0 {
            return Ok(None);
        }
        Ok(Some(
            steps
                .chunks_exact(3)
                .filter_map(|step| match step {
                    [allowed, retry, remaining] => Some(decision(*allowed, *retry, *remaining)),
                    _ => None,
                })
                .collect(),
        ))
    }

    /// Whether writes skip `WAIT` for now (a recent one timed out).
    fn wait_paused(&self) -> bool {
        match self.wait_paused_until.lock() {
            Ok(mut until) => match *until {
                Some(t) if Instant::now() < t => true,
                Some(_) => {
                    *until = None;
                    false
                }
                None => false,
            },
            // A poisoned lock only means a panic elsewhere: wait, the safe side.
            Err(_) => false,
        }
    }

    /// Runs `fut` under [`OPERATION_DEADLINE`].
    async fn bounded<T>(&self, fut: impl std::future::Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        bounded_until(Instant::now() + OPERATION_DEADLINE, fut).await
    }

    /// Sends one command, retried once as `retry` allows.
    async fn send(&self, cmd: &redis::Cmd, retry: Retry) -> Result<Value, RedisError> {
        match self.conn.send_cmd(cmd).await {
            Err(e) if may_retry(&e, retry) => {
                tracing::info!(reason = "store.redis_retry", error = %e, "retrying a Redis command once");
                self.conn.send_cmd(cmd).await
            }
            result => result,
        }
    }

    /// Sends one pipeline (not a transaction), retried once as `retry` allows.
    async fn send_pipe(&self, pipe: &redis::Pipeline, retry: Retry) -> Result<Vec<Value>, RedisError> {
        match self.conn.send_pipe(pipe).await {
            Err(e) if may_retry(&e, retry) => {
                tracing::info!(reason = "store.redis_retry", error = %e, "retrying a Redis command once");
                self.conn.send_pipe(pipe).await
            }
            result => result,
        }
    }
}

impl Conn {
    /// Sends one command; on a single server or a Sentinel-named primary it
    /// goes out with the commands of concurrent operations
    /// ([`super::redis_batch`]).
    async fn send_cmd(&self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let batch = match self {
            Conn::Single(_, batch) => &**batch,
            Conn::Sentinel(s) => &s.batch,
            Conn::Cluster(c) => return cmd.query_async(&mut c.clone()).await,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if batch.push(cmd.clone(), reply) {
            let conn = self.clone();
            tokio::spawn(async move {
                // Runs once every task that was ready has run (and queued
                // its commands).
                tokio::task::yield_now().await;
                conn.flush().await;
            });
        }
        answer.await.unwrap_or_else(|_| Err(redis_batch::dropped()))
    }

    /// Sends what is queued (as pipelines of at most
    /// [`redis_batch::MAX_PIPELINE`] commands, all at once and in queue
    /// order) and answers each command as its pipeline's replies come in.
    async fn flush(&self) {
        let mut chunks = match self {
            Conn::Single(_, batch) => batch.take(),
            Conn::Sentinel(s) => s.batch.take(),
            Conn::Cluster(_) => return,
        };
        if chunks.len() <= 1 {
            if let Some((pipe, replies)) = chunks.pop() {
                self.exchange(pipe, replies).await;
            }
            return;
        }
        // Polled in order, each exchange queues its pipeline on the
        // connection before the next does; each answers its own callers
        // when its replies are in.
        let mut exchanges: Vec<_> = chunks
            .into_iter()
            .map(|(pipe, replies)| Box::pin(self.exchange(pipe, replies)))
            .collect();
        std::future::poll_fn(|cx| {
            exchanges.retain_mut(|exchange| std::future::Future::poll(exchange.as_mut(), cx).is_pending());
            if exchanges.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// Sends one pipeline of queued commands and hands each its answer.
    async fn exchange(&self, pipe: redis::Pipeline, replies: Vec<tokio::sync::oneshot::Sender<redis_batch::Answer>>) {
        let count = replies.len();
        let answers = match self {
            Conn::Single(m, _) => m.clone().req_packed_commands(&pipe, 0, count).await,
            Conn::Sentinel(s) => {
                let (generation, mut m) = s.primary().await;
                let answers = m.req_packed_commands(&pipe, 0, count).await;
                s.check(generation, &answers).await;
                // A command refused by a node that is no longer the primary
                // (`READONLY`) says the same as a failed exchange.
                if let Ok(values) = &answers {
                    if let Some(Value::ServerError(e)) = values.iter().find(|v| matches!(v, Value::ServerError(_))) {
                        s.check::<()>(generation, &Err(RedisError::from(e.clone()))).await;
                    }
                }
                answers
            }
            Conn::Cluster(_) => return,
        };
        redis_batch::deliver(replies, answers);
    }

    async fn send_pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, RedisError> {
        match self {
            Conn::Single(m, _) => pipe.query_async(&mut m.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Sentinel(s) => {
                let (generation, mut m) = s.primary().await;
                let result = pipe.query_async(&mut m).await;
                s.check(generation, &result).await;
                result
            }
        }
    }
}

fn sentinel_client(
    sentinels: &[(String, u16)],
    master: &str,
    auth: &Auth,
    sentinel_auth: &Auth,
    tls: bool,
    files: &RedisTls,
    certs: redis::TlsCertificates,
) -> Result<SentinelClient, StoreError> {
    let addrs = sentinels.iter().map(|(h, p)| addr(h, *p, tls));
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| map_error(&e))?
        .set_client_to_redis_protocol(ProtocolVersion::RESP3);
    if let Some(user) = &auth.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &auth.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &sentinel_auth.username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &sentinel_auth.password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if has_tls_files(files) {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    builder.build().map_err(|e| map_error(&e))
}

impl SentinelConn {
    async fn connect(mut sentinels: SentinelClient, deadline: Instant) -> Result<SentinelConn, StoreError> {
        let config = manager_config();
        let client = bounded_until(deadline, sentinels.async_get_client()).await?;
        let addr = client.get_connection_info().addr().clone();
        let conn = bounded_until(deadline, ConnectionManager::new_with_config(client, config.clone())).await?;
        Ok(SentinelConn {
            sentinels: tokio::sync::Mutex::new(sentinels),
            current: tokio::sync::RwLock::new(Primary { addr, conn }),
            generation: AtomicU64::new(0),
            config,
            batch: Batch::default(),
        })
    }

    async fn primary(&self) -> (u64, ConnectionManager) {
        let current = self.current.read().await;
        (self.generation.load(Ordering::Acquire), current.conn.clone())
    }

    /// After each command: on a failure that may mean the primary moved,
    /// [`Self::after`]. That slow path is boxed, so the futures of every
    /// operation (which embed this one) do not carry its large state and
    /// are not copied around with it on every call.
    async fn check<T>(&self, generation: u64, result: &Result<T, RedisError>) {
        if let Err(e) = result {
            if primary_may_have_moved(e) {
                Box::pin(self.after(generation, e)).await;
            }
        }
    }

    /// After a failure that may mean the primary moved, asks the Sentinels
    /// (once for all requests that failed on the same primary) and moves to
    /// the primary they name now.
    async fn after(&self, generation: u64, e: &RedisError) {
        if !primary_may_have_moved(e) {
            return;
        }
        let mut sentinels = self.sentinels.lock().await;
        if self.generation.load(Ordering::Acquire) != generation {
            return; // another request already moved on
        }
        let client = match sentinels.async_get_client().await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(reason = "store.sentinel_unavailable", error = %e, "the Sentinels named no primary");
                return;
            }
        };
        let addr = client.get_connection_info().addr().clone();
        if self.current.read().await.addr == addr {
            return;
        }
        match ConnectionManager::new_with_config(client, self.config.clone()).await {
            Ok(conn) => {
                *self.current.write().await = Primary { addr, conn };
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    reason = "store.sentinel_failover",
                    "moved to the new Redis primary named by the Sentinels"
                );
            }
            Err(e) => {
                tracing::warn!(reason = "store.sentinel_unavailable", error = %e, "the new Redis primary does not answer yet");
            }
        }
    }
}

/// A connection failure or a node that is not (or no longer) the primary.
fn primary_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Whether the command certainly did not run: the connection was refused,
/// or the server refused it before executing (a replica, a primary without
/// its replicas, a loading server, a cluster moving slots).
fn not_executed(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

fn may_retry(e: &RedisError, retry: Retry) -> bool {
    not_executed(e)
        || (retry == Retry::Idempotent
            && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()))
}

/// A Lua script sent by `EVALSHA`: its text and the SHA-1 Redis names it
/// by, computed on first use and then kept (a `static` per script), instead
/// of hashing the text on every call.
struct Script {
    text: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Script {
    const fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: std::sync::OnceLock::new(),
        }
    }

    /// The lowercase hex SHA-1 of the text, as `SCRIPT LOAD` answers it.
    fn sha(&self) -> &str {
        self.sha.get_or_init(|| super::sha1_hex(self.text.as_bytes()))
    }
}

/// Runs one Redis call until `deadline` and maps its error.
async fn bounded_until<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(result) => result.map_err(|e| map_error(&e)),
        Err(_) => {
            tracing::warn!(reason = "store.redis_timeout", "Redis did not answer in time");
            Err(unavailable("Redis did not answer in time"))
        }
    }
}

/// A type clash, a non-numeric counter or an unparseable answer is about the
/// data; everything else (I/O, timeouts, server refusals) means the store is
/// not usable right now. Server error texts never contain key names.
/// Whether an error (as [`map_error`] words it) is Redis's `NOSCRIPT`: the
/// script is not in the server's cache and nothing ran.
fn is_noscript(message: &str) -> bool {
    message.starts_with("NOSCRIPT ")
}

fn map_error(e: &RedisError) -> StoreError {
    if e.code() == Some("NOSCRIPT") || matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoScript)) {
        // Not a failure of the store: the caller sends the script's text.
        return StoreError::Unavailable(format!("NOSCRIPT {e}"));
    }
    let about_data = e.clone().into_server_errors().is_some_and(|errs| {
        errs.iter().any(|(_, err)| {
            let detail = err.details().unwrap_or_default();
            err.code() == "WRONGTYPE"
                || (err.code() == "ERR" && (detail.contains("not an integer") || detail.contains("overflow")))
        })
    }) || e.code() == Some("WRONGTYPE")
        || (e.code() == Some("ERR")
            && e.detail()
                .is_some_and(|d| d.contains("not an integer") || d.contains("overflow")));
    let corrupt = about_data || matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType);
    if corrupt {
        tracing::warn!(reason = "store.redis_corrupt", error = %e, "Redis value does not fit the operation");
        StoreError::Corrupt(e.to_string())
    } else {
        tracing::warn!(reason = "store.redis_unavailable", error = %e, "Redis call failed");
        StoreError::Unavailable(e.to_string())
    }
}

/// Every text in an answer (a cluster's `INFO` is a map of node → text).
fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|v| collect_texts(v, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

/// The major version in the answer of `INFO server`, if it names one.
fn major_version(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

/// A TTL in whole milliseconds, rounded up, at least 1 (Redis rejects `PX 0`).
/// A rate-limit script's `allowed (0|1), retry_after_ms, remaining`.
fn decision(allowed: i64, retry_ms: i64, remaining: i64) -> RateDecision {
    RateDecision {
        allowed: allowed == 1,
        retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
        remaining: u64::try_from(remaining).unwrap_or(0),
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(MAX_TTL_MS).clamp(1, MAX_TTL_MS)
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(
            redis::cmd("GET").arg(self.key(key)),
            Retry::Idempotent,
            Durability::None,
        )
        .await
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        let found: i64 = self
            .query(
                redis::cmd("EXISTS").arg(self.key(key)),
                Retry::Idempotent,
                Durability::None,
            )
            .await?;
        Ok(found > 0)
    }

    async fn fingerprint(&self, key: &Key) -> Result<Option<String>, StoreError> {
        // A read: retried once after any connection error.
        self.eval(&FINGERPRINT, &[self.key(key)], &[], Retry::Idempotent, Durability::None)
            .await
    }

    async fn get_if_changed(&self, key: &Key, known: Option<&str>) -> Result<IfChanged, StoreError> {
        // A record last seen unstamped (or never seen) is read whole either
        // way, by the script to hash it: a plain `GET` and the fingerprint
        // computed here answer the same, for a fraction of what a script
        // call costs Redis (`docs/performance-log.md`, "Eighteenth pass"). Only
        // a stamp is worth a script: it re-validates from 31 bytes.
        if !known.is_some_and(|k| k.starts_with(super::STAMP_FINGERPRINT)) {
            let value: Option<Vec<u8>> = self.get(key).await?;
            return Ok(match value {
                None => IfChanged::Absent,
                Some(value) => {
                    let fingerprint = super::fingerprint_of(&value);
                    if known == Some(fingerprint.as_str()) {
                        IfChanged::Unchanged
                    } else {
                        IfChanged::Value { value, fingerprint }
                    }
                }
            });
        }
        // A read: retried once after any connection error.
        let answer: Value = self
            .eval(
                &GET_IF_CHANGED,
                &[self.key(key)],
                &[known.unwrap_or_default().as_bytes()],
                Retry::Idempotent,
                Durability::None,
            )
            .await?;
        let corrupt = || StoreError::Corrupt("get_if_changed: unexpected answer".into());
        match answer {
            Value::Nil => Ok(IfChanged::Absent),
            Value::Array(items) => {
                let mut items = items.into_iter();
                match (items.next(), items.next(), items.next()) {
                    (Some(Value::Int(0)), None, None) => Ok(IfChanged::Unchanged),
                    (Some(Value::Int(1)), Some(v), Some(f)) => Ok(IfChanged::Value {
                        value: redis::from_redis_value(v).map_err(|_| corrupt())?,
                        fingerprint: redis::from_redis_value(f).map_err(|_| corrupt())?,
                    }),
                    _ => Err(corrupt()),
                }
            }
            _ => Err(corrupt()),
        }
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
        let ms = ttl.map_or_else(|| "0".to_owned(), |t| ttl_ms(t).to_string());
        // A durable write (`WAIT` after it); repeating it writes the same
        // value and reads again, so it is retried as `put` is.
        self.eval(
            &PUT_THEN_GET,
            &[self.key(key), self.key(read)],
            &[value, ms.as_bytes()],
            Retry::Idempotent,
            Durability::Replicated,
        )
        .await
    }

    async fn read_many(&self, keys: &[(&Key, Read)]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        super::one_tag(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rendered: Vec<String> = keys.iter().map(|(k, _)| self.key(k)).collect();
        let how: Vec<&[u8]> = keys
            .iter()
            .map(|(_, h)| match h {
                Read::Value => b"v".as_slice(),
                Read::Presence => b"e".as_slice(),
            })
            .collect();
        // Reads only: retried once after any connection error.
        let answer: Vec<Value> = self
            .eval(&READ_MANY, &rendered, &how, Retry::Idempotent, Durability::None)
            .await?;
        if answer.len() != keys.len() {
            return Err(StoreError::Corrupt("read_many: unexpected answer".into()));
        }
        answer
            .into_iter()
            .map(|v| match v {
                Value::Nil | Value::Int(0) => Ok(None),
                Value::Int(_) => Ok(Some(Vec::new())),
                other => redis::from_redis_value::<Vec<u8>>(other)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(e.to_string())),
            })
            .collect()
    }

    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl));
        }
        let _: Value = self.query(&cmd, Retry::Idempotent, Durability::Replicated).await?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl));
        }
        // `SET NX` answers OK when written and nil when the key exists.
        let answer: Value = self.query(&cmd, Retry::IfNotExecuted, Durability::Replicated).await?;
        Ok(!matches!(answer, Value::Nil))
    }

    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let (with_ttl, ms) = match ttl {
            Some(ttl) => ("1", ttl_ms(ttl).to_string()),
            None => ("0", "0".to_owned()),
        };
        let written: i64 = self
            .eval(
                &COMPARE_AND_PUT,
                &[self.key(key)],
                &[expected, value, with_ttl.as_bytes(), ms.as_bytes()],
                Retry::IfNotExecuted,
                Durability::Replicated,
            )
            .await?;
        Ok(written == 1)
    }

    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(
            redis::cmd("GETDEL").arg(self.key(key)),
            Retry::IfNotExecuted,
            Durability::Replicated,
        )
        .await
    }

    async fn take_and_mark(
        &self,
        key: &Key,
        marker_key: &Key,
        marker_value: &[u8],
        marker_ttl: Duration,
    ) -> Result<Taken, StoreError> {
        if key.tag() != marker_key.tag() {
            // A script over two slots fails on Redis Cluster: refuse it everywhere.
            return Err(StoreError::Corrupt(
                "take_and_mark keys must share a hash tag".to_owned(),
            ));
        }
        let ms = ttl_ms(marker_ttl).to_string();
        let answer: Vec<Value> = self
            .eval(
                &TAKE_AND_MARK,
                &[self.key(key), self.key(marker_key)],
                &[marker_value, ms.as_bytes()],
                Retry::IfNotExecuted,
                Durability::Replicated,
            )
            .await?;
        let bytes = |v: &Value| match v {
            Value::BulkString(b) => Ok(b.clone()),
            _ => Err(StoreError::Corrupt(
                "take_and_mark answered an unexpected value".to_owned(),
            )),
        };
        match answer.as_slice() {
            [Value::Int(1), v] => Ok(Taken::Value(bytes(v)?)),
            [Value::Int(2), m] => Ok(Taken::Marker(bytes(m)?)),
            [Value::Int(0)] => Ok(Taken::Absent),
            _ => Err(StoreError::Corrupt(
                "take_and_mark answered an unexpected value".to_owned(),
            )),
        }
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        // Idempotent in effect; after a retry the answer may say "was not
        // there" for a key the lost first attempt deleted.
        let removed: i64 = self
            .query(
                redis::cmd("DEL").arg(self.key(key)),
                Retry::Idempotent,
                Durability::Replicated,
            )
            .await?;
        Ok(removed > 0)
    }

    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        let ms = ttl.map(|t| ttl_ms(t).to_string()).unwrap_or_default();
        let _: Value = self
            .eval(
                &SET_ADD,
                &[self.key(key)],
                &[member.as_bytes(), ms.as_bytes()],
                Retry::Idempotent,
                Durability::Replicated,
            )
            .await?;
        Ok(())
    }

    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .query(
                redis::cmd("SREM").arg(self.key(key)).arg(member),
                Retry::Idempotent,
                Durability::Replicated,
            )
            .await?;
        Ok(())
    }

    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        let mut members: Vec<String> = self
            .query(
                redis::cmd("SMEMBERS").arg(self.key(key)),
                Retry::Idempotent,
                Durability::None,
            )
            .await?;
        members.sort();
        Ok(members)
    }

    async fn set_sample(&self, key: &Key, count: usize) -> Result<Vec<String>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // A positive count: distinct members, at most the set's size.
        self.query(
            redis::cmd("SRANDMEMBER").arg(self.key(key)).arg(count),
            Retry::Idempotent,
            Durability::None,
        )
        .await
    }

    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        let ms = ttl_ms(ttl).to_string();
        self.eval(
            &INCR,
            &[self.key(key)],
            &[ms.as_bytes()],
            Retry::IfNotExecuted,
            Durability::None,
        )
        .await
    }

    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        let last = i64::try_from(max_len.max(1))
            .unwrap_or(i64::MAX)
            .saturating_sub(1)
            .to_string();
        let _: Value = self
            .eval(
                &LIST_PUSH_CAPPED,
                &[self.key(key)],
                &[value, last.as_bytes()],
                Retry::IfNotExecuted,
                Durability::Replicated,
            )
            .await?;
        Ok(())
    }

    async fn list_range(&self, key: &Key, start: usize, count: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let first = i64::try_from(start).unwrap_or(i64::MAX);
        let last = first
            .saturating_add(i64::try_from(count).unwrap_or(i64::MAX))
            .saturating_sub(1);
        self.query(
            redis::cmd("LRANGE").arg(self.key(key)).arg(first).arg(last),
            Retry::Idempotent,
            Durability::None,
        )
        .await
    }

    async fn stream_add(&self, key: &Key, value: &[u8], max_len: usize) -> Result<String, StoreError> {
        // Exact trimming (no `~`): the bound is a promise to the reader, and
        // trimming one entry per append costs no more than appending it.
        let cmd = redis::cmd("XADD")
            .arg(self.key(key))
            .arg("MAXLEN")
            .arg(max_len.max(1))
            .arg("*")
            .arg(STREAM_FIELD)
            .arg(value)
            .to_owned();
        // An audit event Redis acknowledged survives a failover.
        self.query(&cmd, Retry::IfNotExecuted, Durability::Replicated).await
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
        let class_max = class_max.max(1).to_string();
        let max_len = max_len.max(1).to_string();
        // Not idempotent (a retry would append twice); acknowledged entries
        // survive a failover, as with `stream_add`.
        self.eval(
            &STREAM_ADD_CLASSED,
            &[self.key(key), self.key(class)],
            &[value, class_max.as_bytes(), max_len.as_bytes(), STREAM_FIELD.as_bytes()],
            Retry::IfNotExecuted,
            Durability::Replicated,
        )
        .await
    }

    async fn stream_range(&self, key: &Key, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            Some(id) => format!("({}", stream_id_arg(id)?),
            None => "-".to_owned(),
        };
        let cmd = redis::cmd("XRANGE")
            .arg(self.key(key))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        stream_entries(self.query(&cmd, Retry::Idempotent, Durability::None).await?)
    }

    async fn stream_rev_range(
        &self,
        key: &Key,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let end = match before {
            Some(id) => format!("({}", stream_id_arg(id)?),
            None => "+".to_owned(),
        };
        let cmd = redis::cmd("XREVRANGE")
            .arg(self.key(key))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        stream_entries(self.query(&cmd, Retry::Idempotent, Durability::None).await?)
    }

    async fn stream_len(&self, key: &Key) -> Result<usize, StoreError> {
        self.query(
            redis::cmd("XLEN").arg(self.key(key)),
            Retry::Idempotent,
            Durability::None,
        )
        .await
    }

    async fn stream_group_create(&self, key: &Key, group: &str) -> Result<(), StoreError> {
        // One script over one key, so an existing group (BUSYGROUP) is not
        // an error and any other refusal still is.
        let _: i64 = self
            .eval(
                &STREAM_GROUP_CREATE,
                &[self.key(key)],
                &[group.as_bytes()],
                Retry::IfNotExecuted,
                Durability::None,
            )
            .await?;
        Ok(())
    }

    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        let window_ms = ttl_ms(window);
        if limit == 0 {
            // Nothing to count: refused like the memory store, without a round trip.
            return Ok(super::gcra(None, 0, 0, window_ms).0);
        }
        // A counter: not retried after an unknown outcome (it may have
        // counted), and it does not wait for replicas (losing a window's
        // count after a failover only resets it).
        let answer: (i64, i64, i64) = self
            .eval(
                &RATE_LIMIT,
                &[self.key(key)],
                &[limit.to_string().as_bytes(), window_ms.to_string().as_bytes()],
                Retry::IfNotExecuted,
                Durability::None,
            )
            .await?;
        Ok(decision(answer.0, answer.1, answer.2))
    }

    async fn rate_limit_chain(
        &self,
        first: (&Key, u64),
        second: (&Key, u64),
        window: Duration,
    ) -> Result<(RateDecision, Option<RateDecision>), StoreError> {
        // On a cluster the two keys may live on different nodes; a zero
        // limit refuses without a round trip: the two steps in turn.
        if matches!(self.conn, Conn::Cluster(_)) || first.1 == 0 || second.1 == 0 {
            let d = self.rate_limit(first.0, first.1, window).await?;
            if !d.allowed {
                return Ok((d, None));
            }
            let d2 = self.rate_limit(second.0, second.1, window).await?;
            return Ok((d, Some(d2)));
        }
        let made = self
            .gcra_steps(None, &[first, second], window)
            .await?
            .unwrap_or_default();
        let mut made = made.into_iter();
        let d = made
            .next()
            .ok_or_else(|| StoreError::Corrupt("rate limit answered nothing".into()))?;
        Ok((d, made.next()))
    }

    async fn stream_group_read(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // No BLOCK: a blocked command would hold up every other command on
        // the shared multiplexed connection.
        let cmd = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.key(key))
            .arg(">")
            .to_owned();
        let answer: Value = self.run(&cmd).await?;
        // `[[key, entries]]` (a map keyed by the stream in RESP3), or nil.
        let streams = match answer {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().map(|(k, v)| Value::Array(vec![k, v])).collect(),
            _ => return Err(unexpected_stream_answer()),
        };
        let mut out = Vec::new();
        for s in streams {
            let Value::Array(pair) = s else {
                return Err(unexpected_stream_answer());
            };
            if let Some(entries) = pair.into_iter().nth(1) {
                out.extend(stream_entries(entries)?);
            }
        }
        Ok(out)
    }

    async fn stream_ack(&self, key: &Key, group: &str, id: &str) -> Result<bool, StoreError> {
        let cmd = redis::cmd("XACK")
            .arg(self.key(key))
            .arg(group)
            .arg(stream_id_arg(id)?)
            .to_owned();
        let acked: i64 = self.run(&cmd).await?;
        Ok(acked > 0)
    }

    async fn stream_autoclaim(
        &self,
        key: &Key,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(MAX_TTL_MS);
        let cmd = redis::cmd("XAUTOCLAIM")
            .arg(self.key(key))
            .arg(group)
            .arg(consumer)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        // `[next cursor, claimed entries, ids trimmed away (dropped from the group)]`.
        let answer: Value = self.run(&cmd).await?;
        match answer {
            Value::Array(parts) => match parts.into_iter().nth(1) {
                Some(entries) => stream_entries(entries),
                None => Err(unexpected_stream_answer()),
            },
            _ => Err(unexpected_stream_answer()),
        }
    }

    async fn rate_limit_guarded(
        &self,
        guard: (&Key, &str),
        limits: &[(&Key, u64)],
        window: Duration,
    ) -> Result<Option<Vec<RateDecision>>, StoreError> {
        // On a cluster the keys may live on different nodes; a zero limit
        // refuses without counting (and an empty fingerprint would read as
        // no guard): the steps in turn.
        if matches!(self.conn, Conn::Cluster(_)) || guard.1.is_empty() || limits.iter().any(|(_, limit)| *limit == 0) {
            return super::rate_limit_guarded_in_steps(self, guard, limits, window).await;
        }
        self.gcra_steps(Some(guard), limits, window).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: Value = self
            .query(&redis::cmd("PING"), Retry::Idempotent, Durability::None)
            .await?;
        Ok(())
    }

    async fn read_many_if_changed(&self, keys: &[(&Key, super::Probe<'_>)]) -> Result<Vec<super::Probed>, StoreError> {
        use super::{Probe, Probed};
        super::one_tag_probed(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rendered: Vec<String> = keys.iter().map(|(k, _)| self.key(k)).collect();
        let how: Vec<Vec<u8>> = keys
            .iter()
            .map(|(_, probe)| match probe {
                Probe::IfChanged(known) => format!("c{}", known.unwrap_or_default()).into_bytes(),
                Probe::Presence => b"e".to_vec(),
                Probe::Members => b"m".to_vec(),
            })
            .collect();
        let args: Vec<&[u8]> = how.iter().map(Vec::as_slice).collect();
        // Reads only: retried once after any connection error.
        let answer: Vec<Value> = self
            .eval(
                &READ_MANY_IF_CHANGED,
                &rendered,
                &args,
                Retry::Idempotent,
                Durability::None,
            )
            .await?;
        let corrupt = || StoreError::Corrupt("read_many_if_changed: unexpected answer".into());
        if answer.len() != keys.len() {
            return Err(corrupt());
        }
        keys.iter()
            .zip(answer)
            .map(|((_, probe), value)| match (probe, value) {
                (Probe::Presence, Value::Int(n)) => Ok(Probed::Present(n > 0)),
                (Probe::Members, Value::Array(items) | Value::Set(items)) => {
                    let mut members = items
                        .into_iter()
                        .map(|m| redis::from_redis_value::<String>(m).map_err(|_| corrupt()))
                        .collect::<Result<Vec<_>, _>>()?;
                    members.sort();
                    Ok(Probed::Members(members))
                }
                (Probe::IfChanged(_), Value::Nil) => Ok(Probed::Read(IfChanged::Absent)),
                (Probe::IfChanged(_), Value::Int(0)) => Ok(Probed::Read(IfChanged::Unchanged)),
                (Probe::IfChanged(_), Value::Array(items)) => {
                    let mut items = items.into_iter();
                    match (items.next(), items.next(), items.next()) {
                        (Some(v), Some(f), None) => Ok(Probed::Read(IfChanged::Value {
                            value: redis::from_redis_value(v).map_err(|_| corrupt())?,
                            fingerprint: redis::from_redis_value(f).map_err(|_| corrupt())?,
                        })),
                        _ => Err(corrupt()),
                    }
                }
                _ => Err(corrupt()),
            })
            .collect()
    }

    async fn write_many(&self, writes: &[Write<'_>]) -> Result<bool, StoreError> {
        super::one_write_tag(writes)?;
        if writes.is_empty() {
            return Ok(true);
        }
        let rendered: Vec<String> = writes.iter().map(|w| self.key(w.key())).collect();
        let ms = |ttl: &Option<Duration>| ttl.map(|t| ttl_ms(t).to_string()).unwrap_or_default();
        let ttls: Vec<String> = writes
            .iter()
            .map(|w| match w {
                Write::Put { ttl, .. } | Write::SetAdd { ttl, .. } => ms(ttl),
                Write::Delete { .. } | Write::RequireAbsent { .. } | Write::RequireValue { .. } => String::new(),
            })
            .collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(writes.len() * 3);
        for (w, ttl) in writes.iter().zip(&ttls) {
            let (op, value): (&[u8], &[u8]) = match w {
                Write::Put { value, .. } => (b"p", value),
                Write::SetAdd { member, .. } => (b"s", member.as_bytes()),
                Write::Delete { .. } => (b"d", b""),
                Write::RequireAbsent { .. } => (b"a", b""),
                Write::RequireValue { value, .. } => (b"e", value),
            };
            args.extend([op, value, ttl.as_bytes()]);
        }
        // Repeating the script writes the same values, or nothing once a
        // condition's key appeared: it is retried as `put` is, and durable
        // (`WAIT`). A required value is a compare-and-set: a repeat of an
        // applied call would see its own write and answer `false`.
        let retry = if writes.iter().any(|w| matches!(w, Write::RequireValue { .. })) {
            Retry::IfNotExecuted
        } else {
            Retry::Idempotent
        };
        let written: i64 = self
            .eval(&WRITE_MANY, &rendered, &args, retry, Durability::Replicated)
            .await?;
        match written {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(StoreError::Corrupt("write_many: unexpected answer".into())),
        }
    }

    async fn read_through(
        &self,
        pointer: &Key,
        reads: &[(&str, Read)],
    ) -> Result<Option<(Vec<u8>, Vec<Option<Vec<u8>>>)>, StoreError> {
        // The names are built in the script from the pointer's value, under
        // the pointer's own rendered tag: every key read is in its slot.
        let base = self.key(&Key::new(pointer.tag(), ""));
        let mut args: Vec<&[u8]> = vec![base.as_bytes()];
        for (prefix, how) in reads {
            args.push(prefix.as_bytes());
            args.push(match how {
                Read::Value => b"v".as_slice(),
                Read::Presence => b"e".as_slice(),
            });
        }
        // Reads only: retried once after any connection error.
        let answer: Value = self
            .eval(
                &READ_THROUGH,
                &[self.key(pointer)],
                &args,
                Retry::Idempotent,
                Durability::None,
            )
            .await?;
        let corrupt = || StoreError::Corrupt("read_through: unexpected answer".into());
        let items = match answer {
            Value::Nil => return Ok(None),
            Value::Array(items) if items.len() == reads.len() + 1 => items,
            _ => return Err(corrupt()),
        };
        let mut items = items.into_iter();
        let value: Vec<u8> = match items.next() {
            Some(v @ Value::BulkString(_)) => redis::from_redis_value(v).map_err(|_| corrupt())?,
            _ => return Err(corrupt()),
        };
        let read = items
            .map(|v| match v {
                Value::Nil | Value::Int(0) => Ok(None),
                Value::Int(_) => Ok(Some(Vec::new())),
                other => redis::from_redis_value::<Vec<u8>>(other)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(e.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((value, read)))
    }

    async fn rotate(&self, r: &Rotate<'_>) -> Result<Taken, StoreError> {
        r.one_tag()?;
        let marker_ms = ttl_ms(r.marker_ttl).to_string();
        let next_ms = r.next_ttl.map_or_else(|| "0".to_owned(), |t| ttl_ms(t).to_string());
        // Conditional (it consumes): retried only when certainly not executed.
        let answer: Vec<Value> = self
            .eval(
                &ROTATE,
                &[
                    self.key(r.key),
                    self.key(r.marker_key),
                    self.key(r.requires),
                    self.key(r.next_key),
                ],
                &[r.marker_value, marker_ms.as_bytes(), r.next_value, next_ms.as_bytes()],
                Retry::IfNotExecuted,
                Durability::Replicated,
            )
            .await?;
        let bytes = |v: &Value| match v {
            Value::BulkString(b) => Ok(b.clone()),
            _ => Err(StoreError::Corrupt("rotate answered an unexpected value".to_owned())),
        };
        match answer.as_slice() {
            [Value::Int(1), v] => Ok(Taken::Value(bytes(v)?)),
            [Value::Int(2), m] => Ok(Taken::Marker(bytes(m)?)),
            [Value::Int(0)] => Ok(Taken::Absent),
            _ => Err(StoreError::Corrupt("rotate answered an unexpected value".to_owned())),
        }
    }
}

/// `write_many`: per key `KEYS[i]`, the write `ARGV[3i-2]` (`p` put, `s`
/// set add, `d` delete, `a` the condition that the key is absent, `e` the
/// condition that it holds the value `ARGV[3i-1]`) with the value or member
/// `ARGV[3i-1]` and the TTL in ms `ARGV[3i]` (empty: none). Set writes over
/// a key of another type are refused, and a present `a` key or an `e` key
/// holding anything else answers 0, before anything is written; 1 when all
/// were written. Keys of one hash tag (checked
/// before it is sent).
static WRITE_MANY: Script = Script::new(
    r"
for i, k in ipairs(KEYS) do
  local op = ARGV[3 * i - 2]
  if op == 's' then
    local t = redis.call('TYPE', k)['ok']
    if t ~= 'none' and t ~= 'set' then
      return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
    end
  elseif op == 'a' and redis.call('EXISTS', k) == 1 then
    return 0
  elseif op == 'e' then
    local t = redis.call('TYPE', k)['ok']
    if t ~= 'string' or redis.call('GET', k) ~= ARGV[3 * i - 1] then
      return 0
    end
  end
end
for i, k in ipairs(KEYS) do
  local op, v, ttl = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if op == 'a' or op == 'e' then
    -- a condition, checked above
  elseif op == 'p' then
    if ttl == '' then
      redis.call('SET', k, v)
    else
      redis.call('SET', k, v, 'PX', ttl)
    end
  elseif op == 's' then
    redis.call('SADD', k, v)
    if ttl ~= '' then
      redis.call('PEXPIRE', k, ttl, 'NX')
      redis.call('PEXPIRE', k, ttl, 'GT')
    end
  else
    redis.call('DEL', k)
  end
end
return 1
",
);

/// `read_through`: `GET KEYS[1]`; nil when absent; else `{value, ...}`
/// with, per pair `ARGV[2i]` (a name prefix), `ARGV[2i+1]` (`v` value, `e`
/// presence), the key `ARGV[1]` (the pointer's rendered tag) .. prefix ..
/// value read. Every key read is in the pointer's hash tag, so its slot.
static READ_THROUGH: Script = Script::new(
    r"
local v = redis.call('GET', KEYS[1])
if not v then
  return false
end
local out = {v}
local i = 2
while ARGV[i] do
  local k = ARGV[1] .. ARGV[i] .. v
  if ARGV[i + 1] == 'v' then
    out[#out + 1] = redis.call('GET', k)
  else
    out[#out + 1] = redis.call('EXISTS', k)
  end
  i = i + 2
end
return out
",
);

/// `rotate`: nothing when the required key (`KEYS[3]`) is absent (`{0}`);
/// otherwise `take_and_mark` of `KEYS[1]` with the marker `KEYS[2]`, and
/// when taken, `SET KEYS[4]` (with `PX` unless `ARGV[4]` is `0`) in the
/// same step. Keys of one hash tag (checked before it is sent).
static ROTATE: Script = Script::new(
    r"
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {0}
end
local v = redis.call('GETDEL', KEYS[1])
if v then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  if ARGV[4] == '0' then
    redis.call('SET', KEYS[4], ARGV[3])
  else
    redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
  end
  return {1, v}
end
local m = redis.call('GET', KEYS[2])
if m then
  return {2, m}
end
return {0}
",
);

/// The one field each stream entry holds its value in.
const STREAM_FIELD: &str = "v";

/// `stream_group_create`: `XGROUP CREATE ... 0 MKSTREAM`, where an existing
/// group (BUSYGROUP) is success. Answers 1 when created, 0 when it existed.
static STREAM_GROUP_CREATE: Script = Script::new(
    r"
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(r) == 'table' and r.err then
  if string.find(r.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(r.err)
end
return 1
",
);

/// A stream id argument, checked before it reaches Redis (the memory store
/// refuses the same ids).
fn stream_id_arg(id: &str) -> Result<String, StoreError> {
    parse_stream_id(id)
        .map(|(ms, seq)| format!("{ms}-{seq}"))
        .ok_or_else(|| StoreError::Corrupt("not a stream id".to_owned()))
}

fn unexpected_stream_answer() -> StoreError {
    StoreError::Corrupt("Redis answered a stream command unexpectedly".to_owned())
}

/// Entries as `XRANGE`, `XREADGROUP` and `XAUTOCLAIM` answer them:
/// `[[id, [field, value, ...]], ...]`. An entry without our field (written
/// by something else, or trimmed: nil) is skipped.
fn stream_entries(answer: Value) -> Result<Vec<StreamEntry>, StoreError> {
    let items = match answer {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(unexpected_stream_answer()),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(unexpected_stream_answer());
        };
        let mut pair = pair.into_iter();
        let id = match pair.next() {
            Some(Value::BulkString(b)) => String::from_utf8(b).map_err(|_| unexpected_stream_answer())?,
            Some(Value::SimpleString(s)) => s,
            _ => return Err(unexpected_stream_answer()),
        };
        let fields = match pair.next() {
            Some(Value::Array(f)) => f,
            Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            if matches!(&name, Value::BulkString(n) if n.as_slice() == STREAM_FIELD.as_bytes()) {
                if let Value::BulkString(v) = value {
                    out.push(StreamEntry {
                        id: id.clone(),
                        value: v,
                    });
                }
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_floor_ticks_until_the_last_clone_of_its_store_is_dropped() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let floor = Arc::new(TimerFloor::start());
        let clone = Arc::clone(&floor);
        // Many periods later (the paused clock jumps to each timer) it still ticks.
        tokio::time::sleep(TIMER_FLOOR * 20).await;
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop(floor);
        tokio::time::sleep(TIMER_FLOOR * 2).await;
        assert_eq!(metrics.num_alive_tasks(), before + 1, "a clone still holds it");
        drop(clone);
        for _ in 0..100 {
            if metrics.num_alive_tasks() == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before, "stopped with its last holder");
    }

    #[test]
    fn ttl_is_rounded_up_to_a_positive_millisecond() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_secs(1)), 1000);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn the_major_version_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(major_version(info), Some(7));
        assert_eq!(major_version("redis_version:6.2.1\r\n"), Some(6));
        assert_eq!(major_version("# Server\r\n"), None);
    }

    #[test]
    fn a_cluster_info_map_yields_every_node_text() {
        let v = Value::Map(vec![
            (
                Value::SimpleString("a".into()),
                Value::VerbatimString {
                    format: redis::VerbatimFormat::Text,
                    text: "redis_version:7.0.1".into(),
                },
            ),
            (
                Value::SimpleString("b".into()),
                Value::BulkString(b"redis_version:6.0.1".to_vec()),
            ),
        ]);
        let mut texts = Vec::new();
        collect_texts(&v, &mut texts);
        let versions: Vec<_> = texts.iter().filter_map(|t| major_version(t)).collect();
        assert_eq!(versions, [7, 6]);
    }

    #[test]
    fn only_unexecuted_failures_retry_a_take() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let pipe = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(may_retry(&refused, Retry::IfNotExecuted));
        assert!(!may_retry(&pipe, Retry::IfNotExecuted));
        assert!(may_retry(&pipe, Retry::Idempotent));
    }

    #[tokio::test]
    async fn an_invalid_url_is_unavailable_and_not_echoed() {
        let err = RedisStore::connect("nonsense://user:hunter2@x", "p").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn tls_files_without_a_tls_url_are_refused() {
        let mut options = RedisOptions::new("redis://127.0.0.1:1", "p");
        options.tls.ca_pem = Some(b"x".to_vec());
        let err = RedisStore::connect_with(&options).await.unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
    }
}
