//! What only the Redis backend has: key prefixes, the key format on the wire,
//! sessions on a real server, and outages (stopped, frozen, restarted,
//! never there). Outage tests use a private server so the shared one stays up.

use crate::support::redis::{self as test_redis, RedisServer};
use portcullis::clock::{SharedClock, SystemClock};
use portcullis::store::redis::{RedisOptions, RedisStore};
use portcullis::store::session::StoreSessionStore;
use portcullis::store::{IfChanged, Key, SharedStore, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_sessions::cookie::time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::SessionStore;

/// Generous: proves "does not hang", not a latency target (expected ≤ ~2 s).
const OUTAGE_BOUND: Duration = Duration::from_secs(5);

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn store_on(url: &str) -> SharedStore {
    Arc::new(RedisStore::connect(url, &test_redis::prefix()).await.unwrap())
}

#[tokio::test]
async fn prefixes_isolate_stores_on_one_server() {
    let url = test_redis::url();
    let (a, b) = (store_on(&url).await, store_on(&url).await);
    let k = Key::tenant("acme", "codes", "shared-name");
    a.put(&k, b"from-a", None).await.unwrap();
    a.set_add(&Key::global("s", "x"), "m", None).await.unwrap();
    assert_eq!(b.get(&k).await.unwrap(), None);
    assert_eq!(b.take(&k).await.unwrap(), None);
    assert!(!b.delete(&k).await.unwrap());
    assert!(b.set_members(&Key::global("s", "x")).await.unwrap().is_empty());
    assert!(b.put_if_absent(&k, b"from-b", None).await.unwrap());
    assert_eq!(a.get(&k).await.unwrap(), Some(b"from-a".to_vec()));
    assert_eq!(b.get(&k).await.unwrap(), Some(b"from-b".to_vec()));
}

#[tokio::test]
async fn keys_on_the_wire_are_prefixed_and_hash_tagged() {
    let url = test_redis::url();
    let prefix = test_redis::prefix();
    let store = RedisStore::connect(&url, &prefix).await.unwrap();
    let mut conn = raw(&url).await;
    let value_key = Key::tenant("acme", "codes", "abc");
    Store::put(&store, &value_key, b"v", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let wire = format!("{prefix}:{{t:acme:codes}}:abc");
    let got: Option<Vec<u8>> = redis::cmd("GET").arg(&wire).query_async(&mut conn).await.unwrap();
    assert_eq!(got, Some(b"v".to_vec()));
    let pttl: i64 = redis::cmd("PTTL").arg(&wire).query_async(&mut conn).await.unwrap();
    assert!((59_000..=60_000).contains(&pttl), "PTTL {pttl}");

    // The exact TTL after "extend, never shorten".
    let set_key = Key::tenant("acme", "sets", "s");
    let set_wire = format!("{prefix}:{{t:acme:sets}}:s");
    let s: SharedStore = Arc::new(store);
    s.set_add(&set_key, "a", Some(Duration::from_secs(60))).await.unwrap();
    s.set_add(&set_key, "b", Some(Duration::from_secs(5))).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(&set_wire).query_async(&mut conn).await.unwrap();
    assert!(pttl > 55_000, "shortened to {pttl}");
    s.set_add(&set_key, "c", Some(Duration::from_secs(120))).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(&set_wire).query_async(&mut conn).await.unwrap();
    assert!(pttl > 115_000, "not extended: {pttl}");
}

#[tokio::test]
async fn sessions_live_in_redis_with_the_configured_lifetime_as_ttl() {
    let url = test_redis::url();
    let prefix = test_redis::prefix();
    let store: SharedStore = Arc::new(RedisStore::connect(&url, &prefix).await.unwrap());
    let clock: SharedClock = Arc::new(SystemClock);
    let sessions = StoreSessionStore::new(store, clock.clone(), Duration::from_secs(600));
    let expiry = OffsetDateTime::from_unix_timestamp(clock.now().timestamp() + 600).unwrap();
    let mut record = Record {
        id: Id::default(),
        data: [("who".to_owned(), serde_json::json!("alice"))].into(),
        expiry_date: expiry,
    };
    sessions.create(&mut record).await.unwrap();
    assert_eq!(sessions.load(&record.id).await.unwrap(), Some(record.clone()));

    let wire = format!("{prefix}:{{g:session:{}}}:record", record.id);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&wire)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    assert!((595_000..=600_000).contains(&pttl), "PTTL {pttl}");

    sessions.delete(&record.id).await.unwrap();
    assert_eq!(sessions.load(&record.id).await.unwrap(), None);
}

/// Runs every operation at once; each must fail as `Unavailable` within
/// [`OUTAGE_BOUND`]. Returns the slowest failure.
async fn assert_all_unavailable(store: &SharedStore) -> Duration {
    let k = Key::global("outage", "k");
    let mut tasks = Vec::new();
    for op in 0..10 {
        let (s, k) = (store.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = match op {
                0 => s.get(&k).await.map(drop),
                1 => s.put(&k, b"v", None).await,
                2 => s.put_if_absent(&k, b"v", None).await.map(drop),
                3 => s.take(&k).await.map(drop),
                4 => s.delete(&k).await.map(drop),
                5 => s.set_add(&k, "m", Some(Duration::from_secs(5))).await,
                6 => s.set_remove(&k, "m").await,
                7 => s.set_members(&k).await.map(drop),
                8 => s.incr(&k, Duration::from_secs(5)).await.map(drop),
                _ => s.ping().await,
            };
            (op, result, started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (op, result, took) = t.await.unwrap();
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "op {op}: {result:?}");
        assert!(took < OUTAGE_BOUND, "op {op} took {took:?}");
        slowest = slowest.max(took);
    }
    slowest
}

/// Polls `ping` until it succeeds; returns how long that took.
async fn wait_until_available(store: &SharedStore) -> Duration {
    let started = Instant::now();
    while store.ping().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(15), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_quickly_and_a_restart_recovers() {
    let server = RedisServer::start();
    let port = server.port();
    let store = store_on(&server.url()).await;
    let k = Key::global("outage", "before");
    store.put(&k, b"v", None).await.unwrap();

    server.stop();
    let slowest = assert_all_unavailable(&store).await;
    eprintln!("stopped server: slowest failure {slowest:?}");

    let _restarted = RedisServer::start_on(port);
    let took = wait_until_available(&store).await;
    eprintln!("restarted server: store answered again after {took:?}");
    store.put(&k, b"after", None).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(b"after".to_vec()));
}

#[tokio::test]
async fn a_frozen_server_is_unavailable_quickly_and_recovers_when_thawed() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    store.ping().await.unwrap();

    server.freeze();
    let slowest = assert_all_unavailable(&store).await;
    eprintln!("frozen server: slowest failure {slowest:?}");

    server.thaw();
    let took = wait_until_available(&store).await;
    eprintln!("thawed server: store answered again after {took:?}");
    let k = Key::global("outage", "after-thaw");
    store.put(&k, b"v", None).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    let url = format!("redis://127.0.0.1:{}", test_redis::free_port());
    let started = Instant::now();
    let err = RedisStore::connect(&url, "p").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
}

#[tokio::test]
async fn connecting_to_a_silent_server_fails_fast() {
    // Accepts TCP connections (the kernel does, from the backlog) and never
    // says a word: the handshake must time out, not hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let err = RedisStore::connect(&url, "p").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
    eprintln!("silent server: connect failed after {:?}", started.elapsed());
}

#[tokio::test]
async fn the_first_operation_after_a_restart_succeeds_on_every_idle_store() {
    let server = RedisServer::start();
    let port = server.port();
    let mut stores = Vec::new();
    for _ in 0..6 {
        let s = store_on(&server.url()).await;
        s.ping().await.unwrap();
        stores.push(s);
    }
    server.stop();
    // Idle while Redis is down, long enough for reconnect attempts to fail.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _restarted = RedisServer::start_on(port);
    // Each store's very first operation after the restart succeeds, the
    // ones that are never repeated after an unknown outcome included.
    let k = |n: &str| Key::tenant("acme", "restart", n);
    stores[0].put(&k("put"), b"v", None).await.unwrap();
    assert_eq!(
        stores[1]
            .take_and_mark(&k("tm"), &k("tm-used"), b"m", Duration::from_secs(5))
            .await
            .unwrap(),
        portcullis::store::Taken::Absent
    );
    assert!(!stores[2].compare_and_put(&k("cas"), b"a", b"b", None).await.unwrap());
    assert!(stores[3].put_if_absent(&k("pia"), b"v", None).await.unwrap());
    assert_eq!(stores[4].incr(&k("n"), Duration::from_secs(5)).await.unwrap(), 1);
    assert_eq!(stores[5].take(&k("t")).await.unwrap(), None);
}

#[tokio::test]
async fn writes_wait_for_replicas_by_default_only_where_there_are_replicas() {
    let single = RedisStore::connect(&test_redis::url(), &test_redis::prefix())
        .await
        .unwrap();
    assert_eq!((single.topology(), single.wait_replicas()), ("single", 0));
    let sentinel = test_redis::shared::sentinel();
    let store = RedisStore::connect(&sentinel.url(), &test_redis::prefix())
        .await
        .unwrap();
    assert_eq!((store.topology(), store.wait_replicas()), ("sentinel", 1));
    // A write returns once the replica holds it: read it there at once.
    let k = Key::tenant("acme", "rf:f1", "tok:abc");
    Store::put(&store, &k, b"rotated", None).await.unwrap();
    let on_replica = test_redis::cli(&[
        "-p",
        &sentinel.replica.port().to_string(),
        "get",
        &k.render(store.prefix()),
    ]);
    assert_eq!(on_replica.trim(), "rotated");
}

#[tokio::test]
async fn writes_waiting_for_a_missing_replica_succeed_and_stop_waiting_for_a_while() {
    let mut options = RedisOptions::new(&test_redis::url(), &test_redis::prefix());
    options.wait_replicas = Some(1);
    options.wait_timeout = Duration::from_millis(150);
    let store = RedisStore::connect_with(&options).await.unwrap();
    let k = Key::global("wait", "k");
    let started = Instant::now();
    Store::put(&store, &k, b"v", None).await.unwrap();
    let first = started.elapsed();
    assert!(first >= Duration::from_millis(140), "the first write waited {first:?}");
    // WAIT holds up the shared connection: after a timeout, writes stop waiting.
    let started = Instant::now();
    for _ in 0..10 {
        Store::put(&store, &k, b"v", None).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(Store::get(&store, &k).await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn tls_refuses_a_server_another_ca_signed_and_a_client_without_its_certificate() {
    let tls = test_redis::shared::tls();
    // The right CA and client certificate connect.
    let ok = RedisStore::connect_with(&tls.options(&test_redis::prefix())).await;
    assert!(ok.is_ok(), "{ok:?}");
    // A CA that did not sign the server's certificate: refused.
    let other = test_redis::TestCa::new();
    let mut options = tls.options(&test_redis::prefix());
    options.tls.ca_pem = Some(other.read("ca.pem"));
    let err = RedisStore::connect_with(&options).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // No client certificate: the server (tls-auth-clients yes) refuses.
    let mut options = tls.options(&test_redis::prefix());
    options.tls.client_cert_pem = None;
    options.tls.client_key_pem = None;
    let err = RedisStore::connect_with(&options).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // A certificate without its key is a configuration error.
    let mut options = tls.options(&test_redis::prefix());
    options.tls.client_key_pem = None;
    let err = RedisStore::connect_with(&options).await.unwrap_err();
    assert!(err.to_string().contains("needs its key"), "{err}");
}

#[tokio::test]
async fn an_acl_user_and_password_in_the_url_authenticate_and_a_wrong_one_is_not_echoed() {
    let server = RedisServer::start_with(
        test_redis::free_port(),
        // The default user stays open for the readiness PING.
        &[
            "--user".into(),
            "gateway".into(),
            "on".into(),
            ">s3cret-pw".into(),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ],
    );
    let url = |auth: &str| format!("redis://{auth}@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(&url("gateway:s3cret-pw"), &test_redis::prefix())
        .await
        .unwrap();
    Store::put(&store, &Key::global("acl", "k"), b"v", None).await.unwrap();
    for wrong in ["gateway:hunter2-wrong", "nobody:hunter2-wrong"] {
        let err = RedisStore::connect(&url(wrong), &test_redis::prefix())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

/// `INFO stats`' `total_reads_processed`: how many reads the server made
/// from its clients (one per batch of commands that arrived together).
async fn reads_processed(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(admin).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Operations that run at the same time go to Redis together (one write,
/// one read on the server for many commands: `store/redis_batch.rs`), and
/// each still gets exactly its own answer: values, "absent", a won or lost
/// `put_if_absent`, a type clash reported as corrupt for that operation
/// only, and scripts the server forgot (`NOSCRIPT` answers one command of
/// the batch; that operation sends its text and runs once).
#[tokio::test]
async fn concurrent_operations_go_together_and_each_gets_its_own_answer() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    let mut admin = raw(&server.url()).await;
    const N: usize = 64;
    let key = |i: usize| Key::tenant("acme", "batch", format!("k{i}"));
    let list = Key::tenant("acme", "batch", "a-list");
    store.list_push_capped(&list, b"x", 4).await.unwrap();
    for i in (0..N).step_by(2) {
        store.put(&key(i), format!("v{i}").as_bytes(), None).await.unwrap();
    }
    // One task's burst on a single-threaded runtime: every operation is
    // queued before the first flush runs, whatever the machine's speed.
    let before = reads_processed(&mut admin).await;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                match i % 4 {
                    0 | 2 => store.get(&key(i)).await.map(|v| format!("{v:?}")),
                    1 => store.put_if_absent(&key(i), b"new", None).await.map(|w| format!("{w}")),
                    _ => store.get(&key(i)).await.map(|v| format!("{v:?}")),
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let after = reads_processed(&mut admin).await;
    for (i, r) in results.iter().enumerate() {
        let want = match i % 4 {
            0 | 2 => format!("{:?}", Some(format!("v{i}").into_bytes())),
            1 => "true".to_owned(),
            _ => "None".to_owned(),
        };
        assert_eq!(r.as_ref().unwrap(), &want, "operation {i}");
    }
    // The INFO call itself is one read; N separate commands would be N.
    assert!(
        after - before <= 4,
        "{N} concurrent operations took {} reads on the server",
        after - before
    );

    // A clash and a forgotten script in the same batch as plain reads.
    let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let code = Key::tenant("acme", "batch", "code");
    let used = Key::tenant("acme", "batch", "used");
    store.put(&code, b"c", None).await.unwrap();
    let (first, limited) = (key(0), Key::new("rl:batch", "gcra"));
    let (clash, taken, plain, window) = tokio::join!(
        store.get(&list),
        store.take_and_mark(&code, &used, b"m", Duration::from_secs(60)),
        store.get(&first),
        store.rate_limit(&limited, 5, Duration::from_secs(60)),
    );
    assert!(matches!(clash, Err(StoreError::Corrupt(_))), "{clash:?}");
    assert_eq!(taken.unwrap(), portcullis::store::Taken::Value(b"c".to_vec()));
    assert_eq!(plain.unwrap(), Some(b"v0".to_vec()));
    assert_eq!(window.unwrap().remaining, 4, "counted once");
    assert_eq!(
        store
            .take_and_mark(&code, &used, b"m", Duration::from_secs(60))
            .await
            .unwrap(),
        portcullis::store::Taken::Marker(b"m".to_vec()),
        "taken once"
    );
}

/// How many times the server ran each of `cmds`, added up (`INFO commandstats`).
async fn calls_of(admin: &mut redis::aio::MultiplexedConnection, cmds: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(admin).await.unwrap();
    cmds.iter()
        .filter_map(|cmd| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
        })
        .sum()
}

/// Script runs, by hash or (after `NOSCRIPT`) by text.
const SCRIPT_CALLS: &[&str] = &["evalsha", "eval"];

/// A record last seen unstamped is read whole to be re-validated, so it is
/// re-validated by a plain `GET` and hashed by the gateway, not by a script
/// that reads and hashes it on the server (a script call costs Redis several
/// times a `GET`); a stamped record still goes to the script, which reads
/// only its first 31 bytes. The answers are `get_if_changed`'s either way
/// (the conformance tests above, on every backend).
#[tokio::test]
async fn only_a_stamped_record_is_re_validated_by_a_script() {
    let server = RedisServer::start();
    let store = store_on(&server.url()).await;
    let mut admin = raw(&server.url()).await;
    let plain = Key::tenant("acme", "apps", "plain");
    let stamped = Key::tenant("acme", "apps", "stamped");
    store.put(&plain, br#"{"name":"plain"}"#, None).await.unwrap();
    store
        .put(&stamped, &portcullis::store::stamped(br#"{"name":"stamped"}"#), None)
        .await
        .unwrap();
    let (scripts, gets) = (
        calls_of(&mut admin, SCRIPT_CALLS).await,
        calls_of(&mut admin, &["get"]).await,
    );

    let IfChanged::Value { fingerprint, .. } = store.get_if_changed(&plain, None).await.unwrap() else {
        panic!("a first read answers the value");
    };
    assert_eq!(fingerprint.len(), 40, "a SHA-1: {fingerprint}");
    assert_eq!(
        store.get_if_changed(&plain, Some(&fingerprint)).await.unwrap(),
        IfChanged::Unchanged
    );
    let absent = Key::tenant("acme", "apps", "absent");
    assert_eq!(
        store.get_if_changed(&absent, Some(&fingerprint)).await.unwrap(),
        IfChanged::Absent
    );
    assert_eq!(
        calls_of(&mut admin, SCRIPT_CALLS).await,
        scripts,
        "no script for unstamped records"
    );
    assert_eq!(calls_of(&mut admin, &["get"]).await, gets + 3);

    let IfChanged::Value { fingerprint, .. } = store.get_if_changed(&stamped, None).await.unwrap() else {
        panic!("a first read answers the value");
    };
    assert!(fingerprint.starts_with("w:"), "{fingerprint}");
    assert_eq!(
        store.get_if_changed(&stamped, Some(&fingerprint)).await.unwrap(),
        IfChanged::Unchanged
    );
    // By hash; and by text too on this fresh server (its first `NOSCRIPT`).
    let ran = calls_of(&mut admin, SCRIPT_CALLS).await - scripts;
    assert!(
        (1..=2).contains(&ran),
        "a stamp is re-validated by the script ({ran} script calls)"
    );
    assert_eq!(
        calls_of(&mut admin, &["get"]).await,
        gets + 4,
        "the first read was a GET"
    );
}
