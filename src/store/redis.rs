//! The Redis store, for production and any number of replicas.
//!
//! One [`ConnectionManager`] (a multiplexed connection that reconnects by
//! itself) serves every request. Every operation runs under a hard deadline,
//! so a Redis that is gone or frozen turns into [`StoreError::Unavailable`]
//! within about two seconds instead of a hung request: `/readyz` and every
//! login depend on that.
//!
//! Each operation touches exactly one key (`compare_and_put` is a Lua script
//! over one key), except `take_and_mark` (a Lua
//! script over two keys that callers build with one hash tag), so the store
//! is safe on Redis Cluster. Requires Redis 7 (`PEXPIRE ... NX | GT`).

use super::{Key, RateDecision, Store, StoreError, Taken};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use std::future::Future;
use std::time::Duration;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the server may take to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The hard bound on one store operation, including waiting for a reconnect.
const OPERATION_DEADLINE: Duration = Duration::from_millis(2000);
/// Reconnect attempts per reconnect cycle; a failed cycle fails the waiting
/// commands and the next command starts a new cycle, so few retries keep
/// failures fast without ever giving up for good.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// Redis rejects expiry times that overflow its clock; anything this long is
/// "practically forever" anyway (about 73 million years).
const MAX_TTL_MS: u64 = (i64::MAX / 4) as u64;

/// `take_and_mark`: GETDEL the value; if it was there, SET the marker (with
/// its TTL) in the same script, so no client ever sees the value gone and the
/// marker missing. Answers `{1, value}`, `{2, marker}` or `{0}`.
const TAKE_AND_MARK: &str = r"
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
";

/// `compare_and_put`: GET the value and SET the new one only if it equals
/// the expected bytes (Lua compares strings byte for byte), with `PX` when a
/// TTL is given (`ARGV[3]` is `1`). An absent key never matches; a value of
/// another type fails with WRONGTYPE. Answers 1 when written, 0 otherwise.
const COMPARE_AND_PUT: &str = r"
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
";

/// `rate_limit`: the GCRA step of [`super::gcra`] in Lua, on the Redis
/// server's clock (`TIME`, one clock for every replica), in whole
/// milliseconds. `ARGV[1]` is the limit (at least 1), `ARGV[2]` the window.
/// A refused request writes nothing. A stored value that is not a number is
/// an error about the data. Answers `{allowed (0|1), retry_after_ms, remaining}`.
const RATE_LIMIT: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = math.max(math.ceil(window / limit), 1)
local depth = interval * limit
local start = now
local v = redis.call('GET', KEYS[1])
if v then
  local tat = tonumber(v)
  if not tat then
    return redis.error_reply('ERR value is not an integer')
  end
  if tat > now then
    start = tat
  end
end
local next = start + interval
local ahead = next - now
if ahead > depth then
  return {0, ahead - depth, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', string.format('%.0f', math.max(ahead, 1)))
return {1, 0, math.floor((depth - ahead) / interval)}
";

/// A [`Store`] on a Redis server (7.0 or later).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    take_and_mark: std::sync::Arc<redis::Script>,
    compare_and_put: std::sync::Arc<redis::Script>,
}

impl std::fmt::Debug for RedisStore {
    // The connection info may carry a password, so only the prefix is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host:port[/db]`)
    /// and renders every key under `prefix`.
    ///
    /// Fails with [`StoreError::Unavailable`] when the URL is invalid or the
    /// server cannot be reached within the deadline, so a misconfigured
    /// gateway stops at start-up rather than at the first login.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        // The URL may hold a password: never echo it.
        let client = redis::Client::open(url).map_err(|_| StoreError::Unavailable("invalid Redis URL".to_owned()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = bounded(ConnectionManager::new_with_config(client, config)).await?;
        let store = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            take_and_mark: std::sync::Arc::new(redis::Script::new(TAKE_AND_MARK)),
            compare_and_put: std::sync::Arc::new(redis::Script::new(COMPARE_AND_PUT)),
        };
        store.check_version().await?;
        Ok(store)
    }

    /// `set_add` and `incr` need `PEXPIRE ... NX | GT` (Redis 7): refuse an
    /// older server now rather than fail every login later. A server that
    /// does not say (INFO restricted, a compatible product) is given the
    /// benefit of the doubt.
    async fn check_version(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("INFO").arg("server").to_owned();
        let info: String = match bounded_raw(cmd.query_async(&mut conn)).await? {
            Ok(info) => info,
            Err(e) if e.code() == Some("NOPERM") => return Ok(()),
            Err(e) => return Err(map_error(&e)),
        };
        match major_version(&info) {
            Some(major) if major < 7 => Err(StoreError::Unavailable(format!(
                "Redis {major} is too old: Portcullis needs Redis 7 or later"
            ))),
            _ => Ok(()),
        }
    }

    /// The prefix every key is rendered under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, key: &Key) -> String {
        key.render(&self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
    }
}

/// Runs one Redis call under [`OPERATION_DEADLINE`] and maps its error.
async fn bounded<T>(fut: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
    bounded_raw(fut).await?.map_err(|e| map_error(&e))
}

/// Runs one Redis call under [`OPERATION_DEADLINE`], leaving its own error.
async fn bounded_raw<T>(fut: impl Future<Output = Result<T, RedisError>>) -> Result<Result<T, RedisError>, StoreError> {
    tokio::time::timeout(OPERATION_DEADLINE, fut).await.map_err(|_| {
        tracing::warn!(reason = "store.redis_timeout", "Redis did not answer in time");
        StoreError::Unavailable("Redis did not answer in time".to_owned())
    })
}

/// A type clash, a non-numeric counter or an unparseable answer is about the
/// data; everything else (I/O, timeouts, server refusals) means the store is
/// not usable right now. Server error texts never contain key names.
fn map_error(e: &RedisError) -> StoreError {
    // In a MULTI the failure is reported per command, inside a pipeline error.
    let about_data = e.clone().into_server_errors().is_some_and(|errs| {
        errs.iter().any(|(_, err)| {
            let detail = err.details().unwrap_or_default();
            err.code() == "WRONGTYPE"
                || (err.code() == "ERR" && (detail.contains("not an integer") || detail.contains("overflow")))
        })
    });
    let corrupt = about_data
        || matches!(
            e.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        );
    if corrupt {
        tracing::warn!(reason = "store.redis_corrupt", error = %e, "Redis value does not fit the operation");
        StoreError::Corrupt(e.to_string())
    } else {
        tracing::warn!(reason = "store.redis_unavailable", error = %e, "Redis call failed");
        StoreError::Unavailable(e.to_string())
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
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(MAX_TTL_MS).clamp(1, MAX_TTL_MS)
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(redis::cmd("GET").arg(self.key(key))).await
    }

    async fn put(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl));
        }
        let _: Value = self.run(&cmd).await?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &Key, value: &[u8], ttl: Option<Duration>) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl_ms(ttl));
        }
        // `SET NX` answers OK when written and nil when the key exists.
        let answer: Value = self.run(&cmd).await?;
        Ok(!matches!(answer, Value::Nil))
    }

    async fn compare_and_put(
        &self,
        key: &Key,
        expected: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.compare_and_put.prepare_invoke();
        invocation.key(self.key(key)).arg(expected).arg(value);
        match ttl {
            Some(ttl) => invocation.arg("1").arg(ttl_ms(ttl)),
            None => invocation.arg("0").arg(0),
        };
        let written: i64 = bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(written == 1)
    }

    async fn take(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(redis::cmd("GETDEL").arg(self.key(key))).await
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
        let mut conn = self.conn.clone();
        let mut invocation = self.take_and_mark.prepare_invoke();
        invocation
            .key(self.key(key))
            .key(self.key(marker_key))
            .arg(marker_value)
            .arg(ttl_ms(marker_ttl));
        // EVALSHA, falling back to EVAL (and caching the script) on NOSCRIPT.
        let answer: Vec<Value> = bounded(invocation.invoke_async(&mut conn)).await?;
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
        let removed: i64 = self.run(redis::cmd("DEL").arg(self.key(key))).await?;
        Ok(removed > 0)
    }

    async fn set_add(&self, key: &Key, member: &str, ttl: Option<Duration>) -> Result<(), StoreError> {
        let k = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SADD").arg(&k).arg(member).ignore();
        if let Some(ttl) = ttl {
            let ms = ttl_ms(ttl);
            // NX gives a set without TTL (new, or persistent until now) its
            // first one; GT extends an existing TTL but never shortens it
            // (GT alone would skip a set without TTL: Redis treats it as infinite).
            pipe.cmd("PEXPIRE").arg(&k).arg(ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&k).arg(ms).arg("GT").ignore();
        }
        // MULTI/EXEC reports a failed command (e.g. WRONGTYPE) as an error.
        let _: Value = self.run_pipe(&pipe).await?;
        Ok(())
    }

    async fn set_remove(&self, key: &Key, member: &str) -> Result<(), StoreError> {
        let _: i64 = self.run(redis::cmd("SREM").arg(self.key(key)).arg(member)).await?;
        Ok(())
    }

    async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        let mut members: Vec<String> = self.run(redis::cmd("SMEMBERS").arg(self.key(key))).await?;
        members.sort();
        Ok(members)
    }

    async fn incr(&self, key: &Key, ttl: Duration) -> Result<i64, StoreError> {
        let k = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCR")
            .arg(&k)
            .cmd("PEXPIRE")
            .arg(&k)
            .arg(ttl_ms(ttl))
            .arg("NX")
            .ignore();
        let (count,): (i64,) = self.run_pipe(&pipe).await?;
        Ok(count)
    }

    async fn list_push_capped(&self, key: &Key, value: &[u8], max_len: usize) -> Result<(), StoreError> {
        let k = self.key(key);
        let last = i64::try_from(max_len.max(1)).unwrap_or(i64::MAX).saturating_sub(1);
        let mut pipe = redis::pipe();
        // One MULTI: no reader ever sees the list longer than its bound.
        pipe.atomic()
            .cmd("LPUSH")
            .arg(&k)
            .arg(value)
            .ignore()
            .cmd("LTRIM")
            .arg(&k)
            .arg(0)
            .arg(last)
            .ignore();
        let _: Value = self.run_pipe(&pipe).await?;
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
        self.run(redis::cmd("LRANGE").arg(self.key(key)).arg(first).arg(last))
            .await
    }

    async fn rate_limit(&self, key: &Key, limit: u64, window: Duration) -> Result<RateDecision, StoreError> {
        let window_ms = ttl_ms(window);
        if limit == 0 {
            // Nothing to count: refused like the memory store, without a round trip.
            return Ok(super::gcra(None, 0, 0, window_ms).0);
        }
        // A script of its own (not a field of the store), so this stays one
        // self-contained method whatever the connection type becomes.
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(RATE_LIMIT));
        let mut conn = self.conn.clone();
        let mut invocation = script.prepare_invoke();
        invocation.key(self.key(key)).arg(limit).arg(window_ms);
        let answer: (i64, i64, i64) = bounded(invocation.invoke_async(&mut conn)).await?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(RateDecision {
            allowed: answer.0 == 1,
            retry_after: ms(answer.1),
            remaining: u64::try_from(answer.2).unwrap_or(0),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn an_invalid_url_is_unavailable_and_not_echoed() {
        let err = RedisStore::connect("nonsense://user:hunter2@x", "p").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)));
        assert!(!err.to_string().contains("hunter2"));
    }
}
