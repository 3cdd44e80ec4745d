//! One conformance suite for every `Store` backend.
//!
//! Each case below is written once against `SharedStore` and run by
//! `conformance!` for the in-memory store and for `RedisStore` on a real
//! Redis server. Time is the one thing that differs: the memory store follows
//! a `ManualClock`, Redis follows the wall clock, so `Backend::pass` either
//! advances the clock or sleeps (TTLs are kept at about a second).
//! Redis-only behaviour (prefixes, outages) lives in `redis_only`.

mod redis_only;

use crate::support;
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::store::memory::MemoryStore;
use portcullis::store::redis::{RedisOptions, RedisStore};
use portcullis::store::{
    IfChanged, Key, Probe, Probed, RateDecision, Read, Rotate, SharedStore, StoreError, StreamEntry, Taken, Write,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

/// The TTL the expiry cases use, and a wait safely past it.
const SHORT: Duration = Duration::from_millis(1000);
const PAST_SHORT: Duration = Duration::from_millis(1200);
const LONG: Duration = Duration::from_secs(60);
/// How many tasks race in the concurrency cases.
const RACERS: usize = 50;

/// A store under test and a way to let time pass for it.
pub struct Backend {
    store: SharedStore,
    clock: Option<ManualClock>,
}

impl Backend {
    async fn pass(&self, by: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(chrono::Duration::from_std(by).unwrap()),
            None => tokio::time::sleep(by).await,
        }
    }
}

async fn memory() -> Backend {
    let clock = ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let shared: SharedClock = Arc::new(clock.clone());
    Backend {
        store: Arc::new(MemoryStore::new(shared)),
        clock: Some(clock),
    }
}

async fn redis() -> Backend {
    let store = RedisStore::connect(&support::redis::url(), &support::redis::prefix())
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        clock: None,
    }
}

async fn on(options: RedisOptions) -> Backend {
    let store = RedisStore::connect_with(&options).await.unwrap();
    Backend {
        store: Arc::new(store),
        clock: None,
    }
}

async fn tls() -> Backend {
    on(support::redis::shared::tls().options(&support::redis::prefix())).await
}

async fn sentinel() -> Backend {
    on(RedisOptions::new(
        &support::redis::shared::sentinel_url(),
        &support::redis::prefix(),
    ))
    .await
}

async fn cluster() -> Backend {
    on(RedisOptions::new(
        &support::redis::shared::cluster_url(),
        &support::redis::prefix(),
    ))
    .await
}

/// Generates one `#[tokio::test]` per case for a backend.
macro_rules! conformance {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($($backend:ident),*) => {$(
        conformance!($backend:
            get_put_delete_roundtrip,
            put_overwrites,
            exists_answers_presence_without_the_value,
            values_expire_after_their_ttl,
            put_if_absent_writes_once,
            take_returns_the_value_once,
            concurrent_takes_see_the_value_once,
            many_concurrent_operations_each_get_their_own_answer,
            concurrent_put_if_absent_admits_one,
            compare_and_put_writes_only_on_a_match,
            concurrent_compare_and_put_one_wins_per_round,
            take_and_mark_takes_once_and_leaves_the_marker,
            concurrent_take_and_mark_one_wins_every_other_sees_the_marker,
            take_and_mark_marker_expires_and_clashes_are_corrupt,
            sets_add_remove_and_list_sorted,
            set_samples_are_distinct_members_picked_at_random,
            set_ttl_extends_but_never_shortens,
            incr_counts_in_a_fixed_window,
            counters_are_decimal_values,
            type_clashes_are_corrupt_and_take_keeps_the_value,
            keys_differ_by_tag_and_name,
            huge_ttls_do_not_overflow,
            capped_lists_keep_the_newest_values,
            list_ranges_page_and_clash_with_other_types,
            concurrent_capped_pushes_lose_nothing_within_the_bound,
            streams_append_in_order_and_trim_exactly,
            stream_classes_keep_their_own_bound,
            stream_ranges_page_both_ways_and_refuse_bad_ids,
            stream_groups_deliver_once_ack_and_reclaim_idle_entries,
            concurrent_group_readers_get_each_entry_once,
            ping_answers,
            rate_limit_allows_a_burst_then_refuses_with_retry_after,
            rate_limit_refills_over_the_window,
            rate_limit_keeps_its_bucket_in_whole_milliseconds,
            concurrent_rate_limit_admits_exactly_the_limit,
            rate_limit_clashes_are_corrupt,
            fingerprint_names_the_stored_bytes,
            a_stamped_record_is_fingerprinted_by_its_stamp,
            rate_limit_chain_counts_the_second_only_after_the_first,
            rate_limit_guarded_counts_only_while_the_record_is_unchanged,
            get_if_changed_answers_only_a_changed_value_with_its_fingerprint,
            read_many_reads_keys_of_one_tag_in_one_step,
            put_then_get_writes_and_reads_in_one_step,
            read_many_if_changed_probes_keys_of_one_tag_in_one_step,
            write_many_writes_keys_of_one_tag_in_one_step,
            write_many_writes_nothing_while_a_required_absent_key_is_there,
            write_many_writes_only_while_a_required_value_is_there,
            rotate_takes_once_and_writes_the_next_only_when_taken,
            concurrent_rotate_one_wins_and_writes_the_next_once,
            read_through_reads_a_pointer_and_what_it_names_in_one_step,
            names_with_separators_and_pattern_characters_are_keys_of_their_own,
        );
    )*};
}

all_cases!(memory, redis, tls, sentinel, cluster);

// The store the gateway really uses: metrics and sealing wrapped around a
// Redis Cluster; every wrapper forwards the one-round-trip operations.
conformance!(wrapped_cluster:
    get_put_delete_roundtrip,
    fingerprint_names_the_stored_bytes,
    a_stamped_record_is_fingerprinted_by_its_stamp,
    get_if_changed_answers_only_a_changed_value_with_its_fingerprint,
    read_many_reads_keys_of_one_tag_in_one_step,
    put_then_get_writes_and_reads_in_one_step,
    read_many_if_changed_probes_keys_of_one_tag_in_one_step,
    write_many_writes_keys_of_one_tag_in_one_step,
    write_many_writes_nothing_while_a_required_absent_key_is_there,
    write_many_writes_only_while_a_required_value_is_there,
    write_many_seals_what_put_seals,
    rotate_takes_once_and_writes_the_next_only_when_taken,
    concurrent_rotate_one_wins_and_writes_the_next_once,
    read_through_reads_a_pointer_and_what_it_names_in_one_step,
    rate_limit_guarded_counts_only_while_the_record_is_unchanged,
);

async fn wrapped_cluster() -> Backend {
    use portcullis::secrets::sealed::SealedStore;
    use portcullis::secrets::{Cipher, StaticKeys};
    use portcullis::store::metered::MeteredStore;
    let raw = RedisStore::connect_with(&RedisOptions::new(
        &support::redis::shared::cluster_url(),
        &support::redis::prefix(),
    ))
    .await
    .unwrap();
    let metered: SharedStore = Arc::new(MeteredStore::new(raw));
    let cipher = Cipher::new(Arc::new(
        StaticKeys::parse("k1 = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "test").unwrap(),
    ));
    Backend {
        store: Arc::new(SealedStore::new(metered, Some(cipher), false)),
        clock: None,
    }
}

async fn get_put_delete_roundtrip(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "codes", "c1");
    assert_eq!(s.get(&k).await.unwrap(), None);
    // Values are bytes, not strings.
    let value = vec![0u8, 255, 10, 13, 0, b'{'];
    s.put(&k, &value, None).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(value));
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert!(!s.delete(&k).await.unwrap());
}

async fn put_overwrites(b: &Backend) {
    let s = &b.store;
    let k = Key::global("things", "one");
    s.put(&k, b"first", Some(LONG)).await.unwrap();
    s.put(&k, b"second", Some(LONG)).await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), Some(b"second".to_vec()));
}

async fn exists_answers_presence_without_the_value(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "config", "exists");
    let short = Key::tenant("acme", "config", "exists-short");
    assert!(!s.exists(&k).await.unwrap());
    s.put(&k, b"", None).await.unwrap();
    // An empty value is still a value.
    assert!(s.exists(&k).await.unwrap());
    s.put(&short, b"v", Some(SHORT)).await.unwrap();
    assert!(s.exists(&short).await.unwrap());
    b.pass(PAST_SHORT).await;
    // An expired key is absent, a deleted one too.
    assert!(!s.exists(&short).await.unwrap());
    assert!(s.delete(&k).await.unwrap());
    assert!(!s.exists(&k).await.unwrap());
}

async fn values_expire_after_their_ttl(b: &Backend) {
    let s = &b.store;
    let put_short = Key::global("ttl", "put");
    let pia_short = Key::global("ttl", "put_if_absent");
    let made_persistent = Key::global("ttl", "persisted");
    let persistent = Key::global("ttl", "none");
    s.put(&put_short, b"v", Some(SHORT)).await.unwrap();
    assert!(s.put_if_absent(&pia_short, b"v", Some(SHORT)).await.unwrap());
    s.put(&made_persistent, b"v", Some(SHORT)).await.unwrap();
    s.put(&made_persistent, b"v2", None).await.unwrap();
    s.put(&persistent, b"v", None).await.unwrap();
    assert!(s.get(&put_short).await.unwrap().is_some());

    b.pass(PAST_SHORT).await;
    assert_eq!(s.get(&put_short).await.unwrap(), None);
    assert_eq!(s.take(&pia_short).await.unwrap(), None);
    // A put without TTL replaces the earlier TTL.
    assert_eq!(s.get(&made_persistent).await.unwrap(), Some(b"v2".to_vec()));
    assert_eq!(s.get(&persistent).await.unwrap(), Some(b"v".to_vec()));
    // An expired key counts as absent.
    assert!(s.put_if_absent(&put_short, b"again", Some(LONG)).await.unwrap());
}

async fn put_if_absent_writes_once(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "pending", "p1");
    assert!(s.put_if_absent(&k, b"first", Some(LONG)).await.unwrap());
    assert!(!s.put_if_absent(&k, b"second", Some(LONG)).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), Some(b"first".to_vec()));
}

async fn take_returns_the_value_once(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "codes", "once");
    assert_eq!(s.take(&k).await.unwrap(), None);
    s.put(&k, b"code", Some(LONG)).await.unwrap();
    assert_eq!(s.take(&k).await.unwrap(), Some(b"code".to_vec()));
    assert_eq!(s.take(&k).await.unwrap(), None);
    assert_eq!(s.get(&k).await.unwrap(), None);
}

async fn concurrent_takes_see_the_value_once(b: &Backend) {
    for round in 0..5 {
        let k = Key::tenant("acme", "codes", format!("race-{round}"));
        b.store.put(&k, b"code", Some(LONG)).await.unwrap();
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|_| {
                let (s, k, barrier) = (b.store.clone(), k.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.take(&k).await.unwrap()
                })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.extend(t.await.unwrap());
        }
        assert_eq!(seen, vec![b"code".to_vec()], "round {round}");
    }
}

/// Far more operations at once than one Redis pipeline carries (they go
/// as several, `store::redis_batch::MAX_PIPELINE`): each gets its own
/// answer, a failing one fails alone, and writes land once.
async fn many_concurrent_operations_each_get_their_own_answer(b: &Backend) {
    const CALLERS: usize = 300;
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (s, barrier) = (b.store.clone(), barrier.clone());
            tokio::spawn(async move {
                let k = Key::tenant("acme", "codes", format!("many-{i}"));
                barrier.wait().await;
                s.put(&k, format!("value-{i}").as_bytes(), Some(LONG)).await.unwrap();
                barrier.wait().await;
                let read = s.get(&k).await.unwrap();
                barrier.wait().await;
                // Every seventh counts on its key holding text (a type
                // clash); the others on a counter of their own.
                let counted = if i % 7 == 0 {
                    s.incr(&k, LONG).await
                } else {
                    s.incr(&Key::tenant("acme", "codes", format!("many-count-{i}")), LONG)
                        .await
                };
                (i, read, counted)
            })
        })
        .collect();
    for t in tasks {
        let (i, read, counted) = t.await.unwrap();
        assert_eq!(read, Some(format!("value-{i}").into_bytes()), "caller {i}");
        if i % 7 == 0 {
            assert!(
                matches!(counted, Err(StoreError::Corrupt(_))),
                "caller {i}: {counted:?}"
            );
        } else {
            assert_eq!(counted.ok(), Some(1), "caller {i}");
        }
    }
    for i in 0..CALLERS {
        let k = Key::tenant("acme", "codes", format!("many-{i}"));
        assert_eq!(b.store.get(&k).await.unwrap(), Some(format!("value-{i}").into_bytes()));
    }
}

async fn take_and_mark_takes_once_and_leaves_the_marker(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "codes", "code:tm");
    let m = Key::tenant("acme", "codes", "used:tm");
    // Neither value nor marker: absent, and nothing is written.
    assert_eq!(s.take_and_mark(&k, &m, b"used", LONG).await.unwrap(), Taken::Absent);
    assert_eq!(s.get(&m).await.unwrap(), None);
    s.put(&k, &[0u8, 255, b'{'], Some(LONG)).await.unwrap();
    assert_eq!(
        s.take_and_mark(&k, &m, b"used-1", LONG).await.unwrap(),
        Taken::Value(vec![0u8, 255, b'{'])
    );
    assert_eq!(s.get(&k).await.unwrap(), None, "the value is gone");
    assert_eq!(s.get(&m).await.unwrap(), Some(b"used-1".to_vec()));
    // A reuse sees the marker and does not overwrite it.
    assert_eq!(
        s.take_and_mark(&k, &m, b"used-2", LONG).await.unwrap(),
        Taken::Marker(b"used-1".to_vec())
    );
    assert_eq!(s.get(&m).await.unwrap(), Some(b"used-1".to_vec()));
    // The marker can be updated afterwards (what was issued) and is answered.
    s.put(&m, b"issued", Some(LONG)).await.unwrap();
    assert_eq!(
        s.take_and_mark(&k, &m, b"used-3", LONG).await.unwrap(),
        Taken::Marker(b"issued".to_vec())
    );
}

async fn concurrent_take_and_mark_one_wins_every_other_sees_the_marker(b: &Backend) {
    for round in 0..5 {
        let k = Key::tenant("acme", "rf:fam", format!("tok:race-{round}"));
        let m = Key::tenant("acme", "rf:fam", format!("used:race-{round}"));
        b.store.put(&k, b"token", Some(LONG)).await.unwrap();
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (s, k, m, barrier) = (b.store.clone(), k.clone(), m.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mine = format!("used-by-{i}");
                    (
                        mine.clone(),
                        s.take_and_mark(&k, &m, mine.as_bytes(), LONG).await.unwrap(),
                    )
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut markers = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (mine, Taken::Value(v)) => {
                    assert_eq!(v, b"token".to_vec());
                    winners.push(mine);
                }
                (_, Taken::Marker(found)) => markers.push(found),
                (_, Taken::Absent) => panic!("round {round}: a racer saw neither value nor marker"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one wins");
        assert_eq!(markers.len(), RACERS - 1, "round {round}");
        // Every loser saw the winner's marker, never its own.
        assert!(
            markers.iter().all(|found| found == winners[0].as_bytes()),
            "round {round}"
        );
    }
}

async fn take_and_mark_marker_expires_and_clashes_are_corrupt(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "codes", "code:exp");
    let m = Key::tenant("acme", "codes", "used:exp");
    s.put(&k, b"v", Some(LONG)).await.unwrap();
    assert_eq!(
        s.take_and_mark(&k, &m, b"used", SHORT).await.unwrap(),
        Taken::Value(b"v".to_vec())
    );
    b.pass(PAST_SHORT).await;
    assert_eq!(s.take_and_mark(&k, &m, b"used", SHORT).await.unwrap(), Taken::Absent);
    // A value of another type is refused and kept.
    let set = Key::tenant("acme", "codes", "code:set");
    s.set_add(&set, "x", Some(LONG)).await.unwrap();
    assert!(matches!(
        s.take_and_mark(&set, &m, b"used", LONG).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.set_members(&set).await.unwrap(), vec!["x".to_owned()]);
    // Two keys in two hash tags would be two Redis Cluster slots: refused,
    // and the value is kept.
    let other_tag = Key::tenant("acme", "elsewhere", "used:exp");
    s.put(&k, b"v", Some(LONG)).await.unwrap();
    assert!(matches!(
        s.take_and_mark(&k, &other_tag, b"used", LONG).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.get(&k).await.unwrap(), Some(b"v".to_vec()));
}

async fn concurrent_put_if_absent_admits_one(b: &Backend) {
    for round in 0..5 {
        let k = Key::tenant("acme", "jti", format!("race-{round}"));
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (s, k, barrier) = (b.store.clone(), k.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mine = format!("writer-{i}");
                    s.put_if_absent(&k, mine.as_bytes(), Some(LONG))
                        .await
                        .unwrap()
                        .then_some(mine)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let stored = b.store.get(&k).await.unwrap().unwrap();
        assert_eq!(stored, winners[0].as_bytes(), "round {round}");
    }
}

async fn compare_and_put_writes_only_on_a_match(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "records", "cas");
    // An absent key never matches, not even an empty expectation.
    assert!(!s.compare_and_put(&k, b"", b"v1", None).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), None);
    s.put(&k, b"v1", None).await.unwrap();
    // A different value (also a prefix of it) does not match.
    assert!(!s.compare_and_put(&k, b"v", b"v2", None).await.unwrap());
    assert!(!s.compare_and_put(&k, b"v10", b"v2", None).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), Some(b"v1".to_vec()));
    assert!(s.compare_and_put(&k, b"v1", b"v2", None).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), Some(b"v2".to_vec()));
    // The old value no longer matches once replaced.
    assert!(!s.compare_and_put(&k, b"v1", b"v3", None).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), Some(b"v2".to_vec()));
    // Binary values compare byte for byte; the TTL applies when given.
    let bin = Key::tenant("acme", "records", "bin");
    s.put(&bin, &[0, 255, 0], None).await.unwrap();
    assert!(s
        .compare_and_put(&bin, &[0, 255, 0], &[1, 0], Some(SHORT))
        .await
        .unwrap());
    assert_eq!(s.get(&bin).await.unwrap(), Some(vec![1, 0]));
    // Without a TTL the value written is persistent, whatever TTL the one
    // it replaced had (a local account stops expiring once confirmed).
    let kept = Key::tenant("acme", "records", "kept");
    s.put(&kept, b"v1", Some(SHORT)).await.unwrap();
    assert!(s.compare_and_put(&kept, b"v1", b"v2", None).await.unwrap());
    b.pass(PAST_SHORT).await;
    assert_eq!(s.get(&bin).await.unwrap(), None);
    assert_eq!(s.get(&kept).await.unwrap(), Some(b"v2".to_vec()));
    // A value of another type is corrupt, not a mismatch.
    let set = Key::tenant("acme", "records", "set");
    s.set_add(&set, "m", None).await.unwrap();
    assert!(matches!(
        s.compare_and_put(&set, b"m", b"v", None).await,
        Err(StoreError::Corrupt(_))
    ));
}

async fn concurrent_compare_and_put_one_wins_per_round(b: &Backend) {
    let k = Key::tenant("acme", "records", "cas-race");
    b.store.put(&k, b"round-0", None).await.unwrap();
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (s, k, barrier) = (b.store.clone(), k.clone(), barrier.clone());
                tokio::spawn(async move {
                    // Everyone reads the same value before anyone writes.
                    let seen = s.get(&k).await.unwrap().unwrap();
                    barrier.wait().await;
                    let mine = format!("round-{}-writer-{i}", round + 1);
                    s.compare_and_put(&k, &seen, mine.as_bytes(), None)
                        .await
                        .unwrap()
                        .then_some(mine)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let stored = b.store.get(&k).await.unwrap().unwrap();
        assert_eq!(stored, winners[0].as_bytes(), "round {round}");
    }
}

async fn sets_add_remove_and_list_sorted(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "user-sessions", "u1");
    assert!(s.set_members(&k).await.unwrap().is_empty());
    s.set_remove(&k, "absent").await.unwrap();
    for m in ["b", "a", "c", "a"] {
        s.set_add(&k, m, Some(LONG)).await.unwrap();
    }
    assert_eq!(s.set_members(&k).await.unwrap(), ["a", "b", "c"]);
    s.set_remove(&k, "b").await.unwrap();
    s.set_remove(&k, "not-a-member").await.unwrap();
    assert_eq!(s.set_members(&k).await.unwrap(), ["a", "c"]);
    s.set_remove(&k, "a").await.unwrap();
    s.set_remove(&k, "c").await.unwrap();
    assert!(s.set_members(&k).await.unwrap().is_empty());
    // The emptied set does not linger as a key.
    assert!(s.put_if_absent(&k, b"v", Some(LONG)).await.unwrap());
}

/// `set_sample`: at most the asked number of distinct members, every one a
/// member; the whole set when it is smaller; nothing from an absent set;
/// over many draws every member is picked (random, not the same few); a
/// key of another type is corrupt.
async fn set_samples_are_distinct_members_picked_at_random(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "sets", "sampled");
    assert!(s.set_sample(&k, 2).await.unwrap().is_empty());
    let members: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    for m in &members {
        s.set_add(&k, m, Some(LONG)).await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let sample = s.set_sample(&k, 2).await.unwrap();
        assert_eq!(sample.len(), 2, "{sample:?}");
        assert_ne!(sample[0], sample[1], "distinct");
        for m in sample {
            assert!(members.contains(&m), "{m} is a member");
            seen.insert(m);
        }
    }
    // 200 draws of 2 out of 20 leave a given member out with a chance of
    // 0.9^200, about 7e-10.
    assert_eq!(seen.len(), members.len(), "every member is picked sooner or later");
    let mut whole = s.set_sample(&k, 50).await.unwrap();
    whole.sort();
    assert_eq!(whole, members, "a sample larger than the set is the set");
    assert!(s.set_sample(&k, 0).await.unwrap().is_empty());
    let bytes = Key::tenant("acme", "sets", "bytes");
    s.put(&bytes, b"v", Some(LONG)).await.unwrap();
    assert!(matches!(s.set_sample(&bytes, 2).await, Err(StoreError::Corrupt(_))));
}

async fn set_ttl_extends_but_never_shortens(b: &Backend) {
    let s = &b.store;
    let k = |n: &str| Key::tenant("acme", "sets", n);
    s.set_add(&k("short"), "m", Some(SHORT)).await.unwrap();
    s.set_add(&k("extended"), "m1", Some(SHORT)).await.unwrap();
    s.set_add(&k("extended"), "m2", Some(LONG)).await.unwrap();
    s.set_add(&k("not-shortened"), "m1", Some(LONG)).await.unwrap();
    s.set_add(&k("not-shortened"), "m2", Some(SHORT)).await.unwrap();
    s.set_add(&k("had-none"), "m1", None).await.unwrap();
    s.set_add(&k("had-none"), "m2", Some(SHORT)).await.unwrap();
    s.set_add(&k("none-keeps"), "m1", Some(SHORT)).await.unwrap();
    s.set_add(&k("none-keeps"), "m2", None).await.unwrap();
    s.set_add(&k("persistent"), "m", None).await.unwrap();

    b.pass(PAST_SHORT).await;
    let members = |n: &'static str| {
        let s = s.clone();
        async move { s.set_members(&k(n)).await.unwrap() }
    };
    assert!(members("short").await.is_empty(), "a set TTL applies");
    assert_eq!(members("extended").await, ["m1", "m2"], "a longer TTL extends");
    assert_eq!(
        members("not-shortened").await,
        ["m1", "m2"],
        "a shorter TTL never shortens"
    );
    assert!(members("had-none").await.is_empty(), "a set without TTL takes one");
    assert!(members("none-keeps").await.is_empty(), "ttl None keeps the TTL");
    assert_eq!(members("persistent").await, ["m"]);
}

async fn incr_counts_in_a_fixed_window(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "rate", "login:203.0.113.7");
    let other = Key::tenant("acme", "rate", "login:198.51.100.1");
    assert_eq!(s.incr(&k, SHORT).await.unwrap(), 1);
    assert_eq!(s.incr(&k, SHORT).await.unwrap(), 2);
    assert_eq!(s.incr(&other, SHORT).await.unwrap(), 1);
    b.pass(Duration::from_millis(400)).await;
    // Later increments do not move the window.
    assert_eq!(s.incr(&k, SHORT).await.unwrap(), 3);
    b.pass(Duration::from_millis(800)).await;
    assert_eq!(s.incr(&k, SHORT).await.unwrap(), 1, "the window expired");
}

async fn counters_are_decimal_values(b: &Backend) {
    let s = &b.store;
    let k = |n: &str| Key::global("counters", n);
    assert_eq!(s.incr(&k("fresh"), LONG).await.unwrap(), 1);
    assert_eq!(s.get(&k("fresh")).await.unwrap(), Some(b"1".to_vec()));
    s.put(&k("numeric"), b"41", None).await.unwrap();
    assert_eq!(s.incr(&k("numeric"), LONG).await.unwrap(), 42);
    s.put(&k("text"), b"forty-one", None).await.unwrap();
    assert!(matches!(s.incr(&k("text"), LONG).await, Err(StoreError::Corrupt(_))));
    s.set_add(&k("set"), "m", None).await.unwrap();
    assert!(matches!(s.incr(&k("set"), LONG).await, Err(StoreError::Corrupt(_))));
    // A value without TTL that gets counted on takes the window (PEXPIRE NX).
    s.put(&k("persistent"), b"0", None).await.unwrap();
    assert_eq!(s.incr(&k("persistent"), SHORT).await.unwrap(), 1);
    b.pass(PAST_SHORT).await;
    assert_eq!(s.get(&k("persistent")).await.unwrap(), None);
}

async fn type_clashes_are_corrupt_and_take_keeps_the_value(b: &Backend) {
    let s = &b.store;
    let bytes = Key::global("clash", "bytes");
    let set = Key::global("clash", "set");
    s.put(&bytes, b"v", Some(LONG)).await.unwrap();
    s.set_add(&set, "m", Some(LONG)).await.unwrap();
    assert!(matches!(
        s.set_add(&bytes, "m", None).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(s.set_members(&bytes).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(s.get(&set).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(s.take(&set).await, Err(StoreError::Corrupt(_))));
    assert_eq!(s.set_members(&set).await.unwrap(), ["m"]);
    assert_eq!(s.get(&bytes).await.unwrap(), Some(b"v".to_vec()));
}

async fn keys_differ_by_tag_and_name(b: &Backend) {
    let s = &b.store;
    let acme = Key::tenant("acme", "codes", "same");
    let evil = Key::tenant("evil", "codes", "same");
    let other_group = Key::tenant("acme", "refresh", "same");
    let global = Key::global("codes", "same");
    s.put(&acme, b"acme", Some(LONG)).await.unwrap();
    for k in [&evil, &other_group, &global] {
        assert_eq!(s.get(k).await.unwrap(), None, "{k:?}");
        assert_eq!(s.take(k).await.unwrap(), None, "{k:?}");
    }
    assert_eq!(s.get(&acme).await.unwrap(), Some(b"acme".to_vec()));
}

async fn huge_ttls_do_not_overflow(b: &Backend) {
    let s = &b.store;
    let k = |n: &str| Key::global("huge", n);
    s.put(&k("put"), b"v", Some(Duration::MAX)).await.unwrap();
    assert!(s.put_if_absent(&k("pia"), b"v", Some(Duration::MAX)).await.unwrap());
    s.set_add(&k("set"), "m", Some(Duration::MAX)).await.unwrap();
    assert_eq!(s.incr(&k("n"), Duration::MAX).await.unwrap(), 1);
    // Enough to notice a TTL that wrapped around to almost nothing.
    b.pass(Duration::from_millis(100)).await;
    assert_eq!(s.get(&k("put")).await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.get(&k("pia")).await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.set_members(&k("set")).await.unwrap(), ["m"]);
    assert_eq!(s.incr(&k("n"), Duration::MAX).await.unwrap(), 2);
}

async fn ping_answers(b: &Backend) {
    b.store.ping().await.unwrap();
}

#[test]
fn key_render_puts_the_tag_in_braces() {
    assert_eq!(
        Key::tenant("acme", "codes", "abc").render("pc"),
        "pc:{t:acme:codes}:abc"
    );
    assert_eq!(Key::global("session", "xyz").render("pc"), "pc:{g:session}:xyz");
    assert_eq!(Key::new("tag", "name").render("p"), "p:{tag}:name");
    assert_eq!(Key::tenant("acme", "codes", "abc").tag(), "t:acme:codes");
}

async fn capped_lists_keep_the_newest_values(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "audit", "log");
    assert!(s.list_range(&k, 0, 10).await.unwrap().is_empty());
    for i in 0..7u8 {
        // Values are bytes, not strings.
        s.list_push_capped(&k, &[i, 0, 255], 4).await.unwrap();
    }
    let all = s.list_range(&k, 0, 100).await.unwrap();
    assert_eq!(
        all,
        vec![vec![6, 0, 255], vec![5, 0, 255], vec![4, 0, 255], vec![3, 0, 255]]
    );
    // A bound of 0 still keeps the value just pushed.
    let one = Key::global("audit", "one");
    s.list_push_capped(&one, b"a", 0).await.unwrap();
    s.list_push_capped(&one, b"b", 0).await.unwrap();
    assert_eq!(s.list_range(&one, 0, 10).await.unwrap(), vec![b"b".to_vec()]);
    // A list is persistent and deleted like any value.
    b.pass(PAST_SHORT).await;
    assert_eq!(s.list_range(&k, 0, 100).await.unwrap().len(), 4);
    assert!(s.delete(&k).await.unwrap());
    assert!(s.list_range(&k, 0, 100).await.unwrap().is_empty());
}

async fn list_ranges_page_and_clash_with_other_types(b: &Backend) {
    let s = &b.store;
    let k = Key::global("audit", "log");
    for i in 0..5 {
        s.list_push_capped(&k, format!("e{i}").as_bytes(), 100).await.unwrap();
    }
    let texts = |v: Vec<Vec<u8>>| v.into_iter().map(|b| String::from_utf8(b).unwrap()).collect::<Vec<_>>();
    assert_eq!(texts(s.list_range(&k, 0, 2).await.unwrap()), ["e4", "e3"]);
    assert_eq!(texts(s.list_range(&k, 2, 2).await.unwrap()), ["e2", "e1"]);
    assert_eq!(texts(s.list_range(&k, 4, 2).await.unwrap()), ["e0"]);
    assert!(s.list_range(&k, 5, 2).await.unwrap().is_empty());
    assert!(s.list_range(&k, 0, 0).await.unwrap().is_empty());
    assert!(s.list_range(&k, usize::MAX, usize::MAX).await.unwrap().is_empty());
    // A list is not a value, and a value is not a list: corrupt, nothing changed.
    assert!(matches!(s.get(&k).await, Err(StoreError::Corrupt(_))));
    let v = Key::global("audit", "plain");
    s.put(&v, b"x", None).await.unwrap();
    assert!(matches!(
        s.list_push_capped(&v, b"y", 3).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(s.list_range(&v, 0, 3).await, Err(StoreError::Corrupt(_))));
    assert_eq!(s.get(&v).await.unwrap(), Some(b"x".to_vec()));
    let set = Key::global("audit", "set");
    s.set_add(&set, "m", None).await.unwrap();
    assert!(matches!(
        s.list_push_capped(&set, b"y", 3).await,
        Err(StoreError::Corrupt(_))
    ));
}

async fn concurrent_capped_pushes_lose_nothing_within_the_bound(b: &Backend) {
    let k = Key::tenant("acme", "audit", "race");
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let s = b.store.clone();
        let k = k.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            s.list_push_capped(&k, format!("{i}").as_bytes(), 1000).await.unwrap();
            // Never longer than the bound, even mid-race.
            s.list_push_capped(&Key::tenant("acme", "audit", "small"), b"x", 3)
                .await
                .unwrap();
            assert!(
                s.list_range(&Key::tenant("acme", "audit", "small"), 0, 10)
                    .await
                    .unwrap()
                    .len()
                    <= 3
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut all: Vec<usize> = b
        .store
        .list_range(&k, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..RACERS).collect::<Vec<_>>());
}

fn values(entries: &[StreamEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.value.clone()).unwrap())
        .collect()
}

fn id_order(id: &str) -> (u64, u64) {
    portcullis::store::parse_stream_id(id).unwrap()
}

async fn streams_append_in_order_and_trim_exactly(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "audit", "stream");
    assert_eq!(s.stream_len(&k).await.unwrap(), 0);
    assert!(s.stream_range(&k, None, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(s.stream_add(&k, format!("e{i}").as_bytes(), 4).await.unwrap());
    }
    // Ids only grow, even within one millisecond.
    for pair in ids.windows(2) {
        assert!(id_order(&pair[0]) < id_order(&pair[1]), "{ids:?}");
    }
    // Exactly the bound, the newest kept.
    assert_eq!(s.stream_len(&k).await.unwrap(), 4);
    let all = s.stream_range(&k, None, 100).await.unwrap();
    assert_eq!(values(&all), ["e3", "e4", "e5", "e6"]);
    assert_eq!(all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids[3..].to_vec());
    // Values are bytes, not strings.
    let bin = Key::global("audit", "bin");
    s.stream_add(&bin, &[0, 255, 10], 10).await.unwrap();
    assert_eq!(s.stream_range(&bin, None, 1).await.unwrap()[0].value, vec![0, 255, 10]);
    // A bound of 0 still keeps the entry just added.
    let one = Key::global("audit", "one");
    s.stream_add(&one, b"a", 0).await.unwrap();
    s.stream_add(&one, b"b", 0).await.unwrap();
    assert_eq!(values(&s.stream_range(&one, None, 10).await.unwrap()), ["b"]);
    // A stream is persistent and deleted like any value.
    b.pass(PAST_SHORT).await;
    assert_eq!(s.stream_len(&k).await.unwrap(), 4);
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(s.stream_len(&k).await.unwrap(), 0);
    // Ids keep growing in a stream written again (never reused while it exists).
    let again = s.stream_add(&one, b"c", 5).await.unwrap();
    let last = s.stream_add(&one, b"d", 5).await.unwrap();
    assert!(id_order(&again) < id_order(&last));
}

/// `stream_add_classed`: each class keeps its own newest entries however
/// many the other gets; the stream's own bound still holds; a class list of
/// another type or a key of another hash tag is refused and writes nothing.
async fn stream_classes_keep_their_own_bound(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "audit", "classed");
    let admin = Key::tenant("acme", "audit", "classed admin");
    let flood = Key::tenant("acme", "audit", "classed flood");
    for i in 0..3 {
        s.stream_add_classed(&k, &admin, format!("a{i}").as_bytes(), 3, 100)
            .await
            .unwrap();
    }
    for i in 0..50 {
        s.stream_add_classed(&k, &flood, format!("f{i}").as_bytes(), 3, 100)
            .await
            .unwrap();
    }
    let all = s.stream_range(&k, None, 100).await.unwrap();
    assert_eq!(values(&all), ["a0", "a1", "a2", "f47", "f48", "f49"]);
    // Ids only grow, across classes too.
    for pair in all.windows(2) {
        assert!(id_order(&pair[0].id) < id_order(&pair[1].id));
    }
    s.stream_add_classed(&k, &admin, b"a3", 3, 100).await.unwrap();
    let all = s.stream_range(&k, None, 100).await.unwrap();
    assert_eq!(values(&all), ["a1", "a2", "f47", "f48", "f49", "a3"]);
    // The stream's own bound trims whatever is oldest (a1, a2), then the
    // class its own (f47).
    s.stream_add_classed(&k, &flood, b"f50", 3, 5).await.unwrap();
    assert_eq!(
        values(&s.stream_range(&k, None, 100).await.unwrap()),
        ["f48", "f49", "a3", "f50"]
    );
    // A class list of another type: refused, nothing appended.
    let clash = Key::tenant("acme", "audit", "classed clash");
    s.put(&clash, b"text", None).await.unwrap();
    assert!(s.stream_add_classed(&k, &clash, b"x", 3, 100).await.is_err());
    assert_eq!(s.stream_len(&k).await.unwrap(), 4);
    // A class of another hash tag is refused (one script, one slot).
    let elsewhere = Key::tenant("globex", "audit", "classed admin");
    assert!(s.stream_add_classed(&k, &elsewhere, b"x", 3, 100).await.is_err());
    assert_eq!(s.stream_len(&k).await.unwrap(), 4);
}

async fn stream_ranges_page_both_ways_and_refuse_bad_ids(b: &Backend) {
    let s = &b.store;
    let k = Key::global("audit", "log");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.stream_add(&k, format!("e{i}").as_bytes(), 100).await.unwrap());
    }
    assert_eq!(values(&s.stream_range(&k, None, 2).await.unwrap()), ["e0", "e1"]);
    assert_eq!(
        values(&s.stream_range(&k, Some(&ids[1]), 2).await.unwrap()),
        ["e2", "e3"]
    );
    assert_eq!(
        values(&s.stream_range(&k, Some(&ids[4]), 2).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(values(&s.stream_rev_range(&k, None, 2).await.unwrap()), ["e4", "e3"]);
    assert_eq!(
        values(&s.stream_rev_range(&k, Some(&ids[3]), 2).await.unwrap()),
        ["e2", "e1"]
    );
    assert_eq!(
        values(&s.stream_rev_range(&k, Some(&ids[0]), 2).await.unwrap()),
        Vec::<String>::new()
    );
    assert!(s.stream_range(&k, None, 0).await.unwrap().is_empty());
    assert!(s.stream_rev_range(&k, None, 0).await.unwrap().is_empty());
    // A cursor from another stream still orders (ids are comparable).
    assert_eq!(
        s.stream_rev_range(&k, Some("99999999999999-0"), 1).await.unwrap().len(),
        1
    );
    for bad in ["", "x", "1-", "-1", "1-2-3", "+", "-", "(1-0", "1 -0", "１-0"] {
        assert!(
            matches!(s.stream_range(&k, Some(bad), 1).await, Err(StoreError::Corrupt(_))),
            "{bad:?}"
        );
        assert!(
            matches!(s.stream_rev_range(&k, Some(bad), 1).await, Err(StoreError::Corrupt(_))),
            "{bad:?}"
        );
    }
    // A stream is not a value, and a value is not a stream: corrupt, nothing changed.
    assert!(matches!(s.get(&k).await, Err(StoreError::Corrupt(_))));
    let v = Key::global("audit", "plain");
    s.put(&v, b"x", None).await.unwrap();
    assert!(matches!(s.stream_add(&v, b"y", 3).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(s.stream_range(&v, None, 3).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(s.stream_len(&v).await, Err(StoreError::Corrupt(_))));
    assert!(s.stream_group_create(&v, "g").await.is_err());
    assert_eq!(s.get(&v).await.unwrap(), Some(b"x".to_vec()));
    let list = Key::global("audit", "list");
    s.list_push_capped(&list, b"x", 3).await.unwrap();
    assert!(matches!(
        s.stream_add(&list, b"y", 3).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(s.list_range(&k, 0, 1).await, Err(StoreError::Corrupt(_))));
}

async fn stream_groups_deliver_once_ack_and_reclaim_idle_entries(b: &Backend) {
    let s = &b.store;
    let k = Key::global("audit", "outbox");
    // Reading through a group that does not exist fails.
    assert!(s.stream_group_read(&k, "hooks", "a", 10).await.is_err());
    s.stream_group_create(&k, "hooks").await.unwrap();
    // Idempotent.
    s.stream_group_create(&k, "hooks").await.unwrap();
    assert_eq!(s.stream_len(&k).await.unwrap(), 0);
    assert!(s.stream_group_read(&k, "hooks", "a", 10).await.unwrap().is_empty());
    for i in 0..3 {
        s.stream_add(&k, format!("e{i}").as_bytes(), 100).await.unwrap();
    }
    let a = s.stream_group_read(&k, "hooks", "a", 2).await.unwrap();
    assert_eq!(values(&a), ["e0", "e1"]);
    let bb = s.stream_group_read(&k, "hooks", "b", 10).await.unwrap();
    assert_eq!(values(&bb), ["e2"]);
    // Nothing is given twice.
    assert!(s.stream_group_read(&k, "hooks", "a", 10).await.unwrap().is_empty());
    // A second group reads everything on its own.
    s.stream_group_create(&k, "other").await.unwrap();
    assert_eq!(
        values(&s.stream_group_read(&k, "other", "x", 10).await.unwrap()),
        ["e0", "e1", "e2"]
    );
    // Acknowledged once.
    assert!(s.stream_ack(&k, "hooks", &a[0].id).await.unwrap());
    assert!(!s.stream_ack(&k, "hooks", &a[0].id).await.unwrap());
    assert!(!s.stream_ack(&k, "nogroup", &a[1].id).await.unwrap());
    assert!(matches!(
        s.stream_ack(&k, "hooks", "nope").await,
        Err(StoreError::Corrupt(_))
    ));
    // Entries pending for a short while are not claimed.
    assert!(s.stream_autoclaim(&k, "hooks", "c", LONG, 10).await.unwrap().is_empty());
    b.pass(PAST_SHORT).await;
    // After the idle time: e1 (a, unacknowledged) and e2 (b) move to c.
    let claimed = s.stream_autoclaim(&k, "hooks", "c", SHORT, 10).await.unwrap();
    assert_eq!(values(&claimed), ["e1", "e2"]);
    // Claiming resets their idle time: nobody else claims them now.
    assert!(s
        .stream_autoclaim(&k, "hooks", "d", SHORT, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s.stream_ack(&k, "hooks", &claimed[0].id).await.unwrap());
    // An entry trimmed away while pending is dropped from the group, not returned.
    for i in 3..6 {
        s.stream_add(&k, format!("e{i}").as_bytes(), 2).await.unwrap();
    }
    let fresh = s.stream_group_read(&k, "hooks", "a", 10).await.unwrap();
    assert_eq!(values(&fresh), ["e4", "e5"]);
    b.pass(PAST_SHORT).await;
    let claimed = s.stream_autoclaim(&k, "hooks", "d", SHORT, 10).await.unwrap();
    assert_eq!(values(&claimed), ["e4", "e5"]);
    // e2 was trimmed: gone from the group for good.
    assert!(!s.stream_ack(&k, "hooks", &bb[0].id).await.unwrap());
    // Deleting the stream deletes its groups.
    assert!(s.delete(&k).await.unwrap());
    assert!(s.stream_group_read(&k, "hooks", "a", 10).await.is_err());
}

async fn concurrent_group_readers_get_each_entry_once(b: &Backend) {
    let k = Key::global("audit", "race");
    b.store.stream_group_create(&k, "hooks").await.unwrap();
    const ENTRIES: usize = 200;
    for i in 0..ENTRIES {
        b.store.stream_add(&k, format!("{i}").as_bytes(), 10_000).await.unwrap();
    }
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let s = b.store.clone();
        let k = k.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = s.stream_group_read(&k, "hooks", &format!("c{i}"), 3).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let mut n: Vec<usize> = values(&all).into_iter().map(|v| v.parse().unwrap()).collect();
    n.sort_unstable();
    assert_eq!(n, (0..ENTRIES).collect::<Vec<_>>());
}

async fn rate_limit_allows_a_burst_then_refuses_with_retry_after(b: &Backend) {
    let s = &b.store;
    let k = Key::new("rl:token:ip:203.0.113.7", "gcra");
    let other = Key::new("rl:token:ip:198.51.100.1", "gcra");
    let window = Duration::from_secs(60);
    for i in 0..5u64 {
        let d = s.rate_limit(&k, 5, window).await.unwrap();
        assert!(d.allowed, "request {i} is within the limit");
        assert_eq!(d.remaining, 4 - i);
        assert_eq!(d.retry_after, Duration::ZERO);
    }
    let refused = s.rate_limit(&k, 5, window).await.unwrap();
    assert!(!refused.allowed, "the sixth request is over the limit");
    // One token comes back every window / limit = 12 s.
    assert!(
        refused.retry_after > Duration::from_secs(11) && refused.retry_after <= Duration::from_secs(12),
        "{refused:?}"
    );
    // Refusals are not counted: the wait does not grow.
    let again = s.rate_limit(&k, 5, window).await.unwrap();
    assert!(!again.allowed && again.retry_after <= refused.retry_after, "{again:?}");
    // Another key has its own bucket.
    assert!(s.rate_limit(&other, 5, window).await.unwrap().allowed);
    // A limit of zero refuses everything.
    let zero = s.rate_limit(&Key::new("rl:x", "zero"), 0, window).await.unwrap();
    assert_eq!(
        zero,
        RateDecision {
            allowed: false,
            retry_after: window,
            remaining: 0
        }
    );
}

async fn rate_limit_refills_over_the_window(b: &Backend) {
    let s = &b.store;
    let k = Key::new("rl:authorize:ip:203.0.113.9", "gcra");
    // Two per second: one token every 500 ms.
    assert!(s.rate_limit(&k, 2, SHORT).await.unwrap().allowed);
    assert!(s.rate_limit(&k, 2, SHORT).await.unwrap().allowed);
    let refused = s.rate_limit(&k, 2, SHORT).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.retry_after <= Duration::from_millis(500), "{refused:?}");
    b.pass(Duration::from_millis(600)).await;
    assert!(s.rate_limit(&k, 2, SHORT).await.unwrap().allowed, "one token came back");
    assert!(!s.rate_limit(&k, 2, SHORT).await.unwrap().allowed, "only one");
    b.pass(PAST_SHORT).await;
    // A full window later the bucket is full again, and the key is gone.
    assert_eq!(s.get(&k).await.unwrap(), None, "the state expires with the window");
    assert!(s.rate_limit(&k, 2, SHORT).await.unwrap().allowed);
    assert!(s.rate_limit(&k, 2, SHORT).await.unwrap().allowed);
    assert!(!s.rate_limit(&k, 2, SHORT).await.unwrap().allowed);
}

/// The bucket is the theoretical arrival time in whole milliseconds, as
/// decimal digits (what the next step, on any replica or backend, parses):
/// each admitted request moves it by exactly window / limit.
async fn rate_limit_keeps_its_bucket_in_whole_milliseconds(b: &Backend) {
    let s = &b.store;
    let k = Key::new("rl:token:ip:192.0.2.44", "gcra");
    let window = Duration::from_secs(60);
    let mut seen = Vec::new();
    for _ in 0..3 {
        assert!(s.rate_limit(&k, 5, window).await.unwrap().allowed);
        let raw = s.get(&k).await.unwrap().expect("the bucket is stored");
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.is_empty() && text.bytes().all(|c| c.is_ascii_digit()), "{text:?}");
        seen.push(text.parse::<u64>().unwrap());
    }
    // Milliseconds since the epoch (after 2001, before 5138).
    assert!(seen[0] > 1_000_000_000_000 && seen[0] < 100_000_000_000_000, "{seen:?}");
    assert_eq!([seen[1] - seen[0], seen[2] - seen[1]], [12_000, 12_000], "{seen:?}");
}

async fn concurrent_rate_limit_admits_exactly_the_limit(b: &Backend) {
    let k = Key::new("rl:token:tenant:acme", "gcra");
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let (s, k, barrier) = (b.store.clone(), k.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            s.rate_limit(&k, 20, LONG).await.unwrap().allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        if t.await.unwrap() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 20, "exactly the limit is admitted, however the requests race");
}

async fn rate_limit_clashes_are_corrupt(b: &Backend) {
    let s = &b.store;
    let text = Key::new("rl:clash", "text");
    s.put(&text, b"not a number", None).await.unwrap();
    assert!(matches!(
        s.rate_limit(&text, 5, LONG).await,
        Err(StoreError::Corrupt(_))
    ));
    let set = Key::new("rl:clash", "set");
    s.set_add(&set, "m", None).await.unwrap();
    assert!(matches!(s.rate_limit(&set, 5, LONG).await, Err(StoreError::Corrupt(_))));
}

async fn fingerprint_names_the_stored_bytes(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "config", "fingerprinted");
    assert_eq!(s.fingerprint(&k).await.unwrap(), None, "absent: no fingerprint");
    s.put(&k, b"first", None).await.unwrap();
    let first = s.fingerprint(&k).await.unwrap().expect("a fingerprint");
    // The lowercase hex SHA-1 of the stored bytes, the same on every backend.
    assert_eq!(first, "e0996a37c13d44c3b06074939d43fa3759bd32c1");
    assert_eq!(first, portcullis::store::fingerprint_of(b"first"));
    assert_eq!(
        s.fingerprint(&k).await.unwrap().as_deref(),
        Some(first.as_str()),
        "stable"
    );
    s.put(&k, b"second", None).await.unwrap();
    let second = s.fingerprint(&k).await.unwrap().expect("a fingerprint");
    assert_ne!(first, second, "a write that changes the bytes changes it");
    assert!(s.compare_and_put(&k, b"second", b"first", None).await.unwrap());
    assert_eq!(
        s.fingerprint(&k).await.unwrap(),
        Some(first),
        "it names the bytes, not the write"
    );
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(s.fingerprint(&k).await.unwrap(), None, "deleted: none");
}

/// A record whose bytes begin with a write stamp (`store::stamped`, as
/// connections are written) is fingerprinted by the stamp alone, `w:` and
/// the stamp, on every backend and through the sealing wrapper (the
/// wrapped case seals this key's `sp_private_key_pem`): every way of
/// re-validating it (`fingerprint`, `get_if_changed`,
/// `read_many_if_changed`, `rate_limit_guarded`) answers "unchanged" for
/// it. The same content written without a stamp (as a writer of an
/// earlier version writes it) and a new stamp are each a change, answered
/// with the value and its fingerprint; bytes that only resemble a stamp
/// are fingerprinted by their SHA-1.
async fn a_stamped_record_is_fingerprinted_by_its_stamp(b: &Backend) {
    use portcullis::store::{fingerprint_of, sha1_hex, stamp_of, stamped};
    let s = &b.store;
    let k = Key::tenant("acme", "config", "connection:stamped");
    let rl = Key::new("rl:stamped", "gcra");
    let window = Duration::from_secs(60);
    let body = format!(
        r#"{{"id":"stamped","sp_private_key_pem":"-----BEGIN PRIVATE KEY-----","metadata_xml":"{}"}}"#,
        "m".repeat(40_000)
    );
    let json = |v: &[u8]| serde_json::from_slice::<serde_json::Value>(v).unwrap();
    let first = stamped(body.as_bytes());
    let stamp = stamp_of(&first).expect("stamped").to_owned();
    assert_eq!(stamp.len(), 22);
    assert_eq!(json(&first)["_w"], stamp.as_str(), "the stamp is the first member");
    s.put(&k, &first, None).await.unwrap();
    let known = format!("w:{stamp}");
    assert_eq!(s.fingerprint(&k).await.unwrap().as_deref(), Some(known.as_str()));
    let IfChanged::Value { value, fingerprint } = s.get_if_changed(&k, None).await.unwrap() else {
        panic!("a stored value");
    };
    assert_eq!(fingerprint, known);
    assert_eq!(json(&value), json(&first));
    assert_eq!(s.get_if_changed(&k, Some(&known)).await.unwrap(), IfChanged::Unchanged);
    assert_eq!(
        s.read_many_if_changed(&[(&k, Probe::IfChanged(Some(&known)))])
            .await
            .unwrap(),
        vec![Probed::Read(IfChanged::Unchanged)]
    );
    let counted = s.rate_limit_guarded((&k, &known), &[(&rl, 100)], window).await.unwrap();
    assert_eq!(counted.map(|d| d.len()), Some(1), "counted under the stamped record");

    // The same content without a stamp: a change, fingerprinted by its SHA-1.
    s.put(&k, body.as_bytes(), None).await.unwrap();
    let IfChanged::Value { value, fingerprint } = s.get_if_changed(&k, Some(&known)).await.unwrap() else {
        panic!("an unstamped write is a change");
    };
    assert_eq!(json(&value), json(body.as_bytes()));
    assert!(
        !fingerprint.starts_with("w:") && fingerprint.len() == 40,
        "{fingerprint}"
    );
    assert_eq!(s.fingerprint(&k).await.unwrap().as_deref(), Some(fingerprint.as_str()));
    assert_eq!(
        s.rate_limit_guarded((&k, &known), &[(&rl, 100)], window).await.unwrap(),
        None
    );
    let unstamped = fingerprint;

    // A new stamp: a change, whatever else is the same.
    let second = stamped(body.as_bytes());
    s.put(&k, &second, None).await.unwrap();
    let renewed = format!("w:{}", stamp_of(&second).unwrap());
    assert_ne!(renewed, known);
    for asked in [&known, &unstamped] {
        let answers = s
            .read_many_if_changed(&[(&k, Probe::IfChanged(Some(asked)))])
            .await
            .unwrap();
        let [Probed::Read(IfChanged::Value { value, fingerprint })] = answers.as_slice() else {
            panic!("a change: {answers:?}");
        };
        assert_eq!(fingerprint, &renewed);
        assert_eq!(json(value), json(&second));
    }

    // Only the exact form is a stamp: these are fingerprinted by their SHA-1.
    let short = br#"{"_w":"AAAAAAAAAAAAAAAAAAAAA","id":"x"}"#;
    let long = br#"{"_w":"AAAAAAAAAAAAAAAAAAAAAAA","id":"x"}"#;
    let odd = br#"{"_w":"AAAAAAAAAAAAAAAAAAAAA.","id":"x"}"#;
    let later = br#"{"id":"x","_w":"AAAAAAAAAAAAAAAAAAAAAA"}"#;
    let spaced = br#"{ "_w":"AAAAAAAAAAAAAAAAAAAAAA","id":"x"}"#;
    let plain = Key::tenant("acme", "config", "lookalike");
    for bytes in [&short[..], long, odd, later, spaced] {
        assert_eq!(stamp_of(bytes), None, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(fingerprint_of(bytes), sha1_hex(bytes));
        s.put(&plain, bytes, None).await.unwrap();
        assert_eq!(s.fingerprint(&plain).await.unwrap(), Some(sha1_hex(bytes)));
    }
    let exact = br#"{"_w":"AAAAAAAAAAAAAAAAAAAAAA"}"#;
    s.put(&plain, exact, None).await.unwrap();
    assert_eq!(
        s.fingerprint(&plain).await.unwrap().as_deref(),
        Some("w:AAAAAAAAAAAAAAAAAAAAAA"),
        "a stamp may also be the only member"
    );
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(s.get_if_changed(&k, Some(&renewed)).await.unwrap(), IfChanged::Absent);
}

async fn rate_limit_chain_counts_the_second_only_after_the_first(b: &Backend) {
    let s = &b.store;
    let ip = Key::new("rl:token:ip:203.0.113.9", "gcra");
    let other_ip = Key::new("rl:token:ip:198.51.100.9", "gcra");
    let tenant = Key::tenant("acme", "rl", "token");
    let window = Duration::from_secs(60);
    // Both within their limits: both counted.
    let (first, second) = s.rate_limit_chain((&ip, 1), (&tenant, 3), window).await.unwrap();
    assert!(first.allowed && first.remaining == 0, "{first:?}");
    let second = second.expect("the second limit is counted when the first allows");
    assert!(second.allowed && second.remaining == 2, "{second:?}");
    // The first refuses: the second is neither asked nor counted.
    let (first, second) = s.rate_limit_chain((&ip, 1), (&tenant, 3), window).await.unwrap();
    assert!(
        !first.allowed && first.retry_after > Duration::from_secs(59),
        "{first:?}"
    );
    assert_eq!(second, None);
    // So another address finds the tenant's bucket where the first request left it.
    let (first, second) = s.rate_limit_chain((&other_ip, 5), (&tenant, 3), window).await.unwrap();
    assert!(first.allowed && first.remaining == 4, "{first:?}");
    let second = second.expect("counted");
    assert!(
        second.allowed && second.remaining == 1,
        "not drained by the refusal: {second:?}"
    );
    // The second refuses: the first has counted, as two calls in a row would.
    assert!(s.rate_limit(&tenant, 3, window).await.unwrap().allowed);
    let (first, second) = s.rate_limit_chain((&other_ip, 5), (&tenant, 3), window).await.unwrap();
    assert!(first.allowed && first.remaining == 3, "{first:?}");
    let second = second.expect("counted");
    assert!(!second.allowed && second.retry_after > Duration::ZERO, "{second:?}");
    let after = s.rate_limit(&other_ip, 5, window).await.unwrap();
    assert!(
        after.allowed && after.remaining == 2,
        "the first counted the refused request: {after:?}"
    );
    // A zero limit refuses, as `rate_limit` does.
    let (first, second) = s
        .rate_limit_chain((&Key::new("rl:x", "zero"), 0), (&tenant, 3), window)
        .await
        .unwrap();
    assert!(!first.allowed);
    assert_eq!(second, None);
}

/// The limits a caller took from a record it keeps are counted only while
/// the stored record still has the fingerprint it was decoded from; a
/// changed or deleted record counts nothing and answers `None`.
async fn rate_limit_guarded_counts_only_while_the_record_is_unchanged(b: &Backend) {
    let s = &b.store;
    let record = Key::tenant("acme", "config", "tenant");
    let ip = Key::new("rl:guarded:ip:192.0.2.1", "gcra");
    let tenant = Key::tenant("acme", "rl", "guarded");
    let window = Duration::from_secs(60);
    s.put(&record, b"limits v1", None).await.unwrap();
    let v1 = s.fingerprint(&record).await.unwrap().unwrap();
    let both = [(&ip, 3), (&tenant, 1)];
    let d = s
        .rate_limit_guarded((&record, &v1), &both, window)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.len(), 2);
    assert!(d[0].allowed && d[1].allowed);
    assert_eq!((d[0].remaining, d[1].remaining), (2, 0));
    // The second refuses: the first was counted.
    let d = s
        .rate_limit_guarded((&record, &v1), &both, window)
        .await
        .unwrap()
        .unwrap();
    assert!(d[0].allowed && !d[1].allowed, "{d:?}");
    assert_eq!(d[0].remaining, 1);
    assert!(d[1].retry_after > Duration::ZERO);
    // Changed: nothing counted.
    s.put(&record, b"limits v2", None).await.unwrap();
    assert_eq!(s.rate_limit_guarded((&record, &v1), &both, window).await.unwrap(), None);
    let v2 = s.fingerprint(&record).await.unwrap().unwrap();
    let d = s
        .rate_limit_guarded((&record, &v2), &[(&ip, 3)], window)
        .await
        .unwrap()
        .unwrap();
    assert!(d[0].allowed, "the refused guard did not count: {d:?}");
    assert_eq!(d[0].remaining, 0);
    // The first refuses: the chain stops there.
    let d = s
        .rate_limit_guarded((&record, &v2), &both, window)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.len(), 1);
    assert!(!d[0].allowed);
    // Gone: nothing counted either.
    s.delete(&record).await.unwrap();
    assert_eq!(s.rate_limit_guarded((&record, &v2), &both, window).await.unwrap(), None);
}

/// Scripts are sent by their SHA-1 (`EVALSHA`); a server that lost its
/// script cache (restart, failover, `SCRIPT FLUSH`) answers `NOSCRIPT`
/// without running anything, and the store sends the text then: every
/// script operation keeps working, and a consuming one still runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_work_after_the_server_forgot_them() {
    use portcullis::store::Store;
    let server = support::redis::RedisServer::start();
    let store = RedisStore::connect(&server.url(), &support::redis::prefix())
        .await
        .unwrap();
    let mut admin = ::redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    let flush = |con: &mut ::redis::Connection| {
        let () = ::redis::cmd("SCRIPT").arg("FLUSH").query(con).unwrap();
    };
    let code = Key::tenant("acme", "codes", "code:x");
    let used = Key::tenant("acme", "codes", "used:x");
    let window = Duration::from_secs(60);
    for round in 0..3 {
        flush(&mut admin);
        store.put(&code, b"v", Some(LONG)).await.unwrap();
        assert_eq!(
            store.take_and_mark(&code, &used, b"m", LONG).await.unwrap(),
            Taken::Value(b"v".to_vec()),
            "round {round}"
        );
        // Known now: by its hash, and the marker answers the reuse.
        assert_eq!(
            store.take_and_mark(&code, &used, b"m", LONG).await.unwrap(),
            Taken::Marker(b"m".to_vec())
        );
        flush(&mut admin);
        let limited = Key::new(format!("rl:token:ip:192.0.2.{round}"), "gcra");
        assert_eq!(store.rate_limit(&limited, 5, window).await.unwrap().remaining, 4);
        assert_eq!(
            store.rate_limit(&limited, 5, window).await.unwrap().remaining,
            3,
            "counted once each"
        );
        flush(&mut admin);
        assert!(store.fingerprint(&code).await.unwrap().is_none());
    }
    let calls: String = ::redis::cmd("INFO").arg("commandstats").query(&mut admin).unwrap();
    assert!(calls.contains("cmdstat_evalsha:"), "scripts go by hash: {calls}");
}

async fn get_if_changed_answers_only_a_changed_value_with_its_fingerprint(b: &Backend) {
    let s = &b.store;
    let k = Key::tenant("acme", "config", "if-changed");
    assert_eq!(s.get_if_changed(&k, None).await.unwrap(), IfChanged::Absent);
    assert_eq!(
        s.get_if_changed(&k, Some("e0996a37c13d44c3b06074939d43fa3759bd32c1"))
            .await
            .unwrap(),
        IfChanged::Absent,
        "absent whatever the caller holds"
    );
    s.put(&k, b"first", None).await.unwrap();
    let stored = s.fingerprint(&k).await.unwrap().expect("a fingerprint");
    // Without a fingerprint: the value and the fingerprint `fingerprint` answers.
    let IfChanged::Value { value, fingerprint } = s.get_if_changed(&k, None).await.unwrap() else {
        panic!("a value")
    };
    assert_eq!(value, b"first".to_vec());
    assert_eq!(fingerprint, stored, "the fingerprint of the bytes as stored");
    assert_eq!(
        s.get_if_changed(&k, Some(&fingerprint)).await.unwrap(),
        IfChanged::Unchanged,
        "the caller's copy is current: nothing transferred"
    );
    assert!(matches!(
        s.get_if_changed(&k, Some("0000000000000000000000000000000000000000"))
            .await
            .unwrap(),
        IfChanged::Value { .. }
    ));
    s.put(&k, b"second", None).await.unwrap();
    let IfChanged::Value {
        value,
        fingerprint: next,
    } = s.get_if_changed(&k, Some(&fingerprint)).await.unwrap()
    else {
        panic!("a changed value is answered")
    };
    assert_eq!(value, b"second".to_vec());
    assert_ne!(next, fingerprint);
    assert_eq!(s.fingerprint(&k).await.unwrap().as_deref(), Some(next.as_str()));
    assert!(s.delete(&k).await.unwrap());
    assert_eq!(
        s.get_if_changed(&k, Some(&next)).await.unwrap(),
        IfChanged::Absent,
        "deleted"
    );
    // Another type at the key is corrupt, as for `get`.
    let set = Key::tenant("acme", "config", "if-changed-set");
    s.set_add(&set, "m", None).await.unwrap();
    assert!(matches!(
        s.get_if_changed(&set, None).await,
        Err(StoreError::Corrupt(_))
    ));
}

async fn read_many_reads_keys_of_one_tag_in_one_step(b: &Backend) {
    let s = &b.store;
    let (user, flag, missing) = (
        Key::tenant("acme", "users", "user:u1"),
        Key::tenant("acme", "users", "disabled:u1"),
        Key::tenant("acme", "users", "user:u2"),
    );
    s.put(&user, b"{\"sub\":\"u1\"}", None).await.unwrap();
    let answers = s
        .read_many(&[(&user, Read::Value), (&flag, Read::Presence), (&missing, Read::Value)])
        .await
        .unwrap();
    assert_eq!(answers, vec![Some(b"{\"sub\":\"u1\"}".to_vec()), None, None]);
    s.put(&flag, b"1", None).await.unwrap();
    let answers = s
        .read_many(&[(&flag, Read::Presence), (&user, Read::Presence)])
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![Some(Vec::new()), Some(Vec::new())],
        "presence only: no value"
    );
    // Expired keys are absent.
    let short = Key::tenant("acme", "users", "short");
    s.put(&short, b"x", Some(SHORT)).await.unwrap();
    b.pass(PAST_SHORT).await;
    assert_eq!(s.read_many(&[(&short, Read::Value)]).await.unwrap(), vec![None]);
    assert_eq!(s.read_many(&[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());
    // Keys of several hash tags are refused before anything is read.
    let other = Key::tenant("acme", "config", "tenant");
    assert!(matches!(
        s.read_many(&[(&user, Read::Value), (&other, Read::Value)]).await,
        Err(StoreError::Corrupt(_))
    ));
}

async fn put_then_get_writes_and_reads_in_one_step(b: &Backend) {
    let s = &b.store;
    let (mine, theirs) = (
        Key::tenant("acme", "codes", "used:h1"),
        Key::tenant("acme", "codes", "replayed:h1"),
    );
    // Nothing on the other side yet: written, nothing read.
    assert_eq!(
        s.put_then_get(&mine, b"issued", Some(LONG), &theirs).await.unwrap(),
        None
    );
    assert_eq!(s.get(&mine).await.unwrap(), Some(b"issued".to_vec()));
    // The other side writes its key and reads mine.
    assert_eq!(
        s.put_then_get(&theirs, b"1", Some(SHORT), &mine).await.unwrap(),
        Some(b"issued".to_vec())
    );
    assert_eq!(
        s.put_then_get(&mine, b"again", None, &theirs).await.unwrap(),
        Some(b"1".to_vec()),
        "without a TTL too"
    );
    // The TTL is the write's: the short one expires.
    b.pass(PAST_SHORT).await;
    assert_eq!(s.get(&theirs).await.unwrap(), None);
    assert_eq!(s.put_then_get(&mine, b"x", Some(LONG), &theirs).await.unwrap(), None);
    // Keys of two hash tags are refused, and nothing is written.
    let elsewhere = Key::tenant("acme", "users", "user:u9");
    assert!(matches!(
        s.put_then_get(&elsewhere, b"v", None, &mine).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.get(&elsewhere).await.unwrap(), None);
}

async fn read_many_if_changed_probes_keys_of_one_tag_in_one_step(b: &Backend) {
    let s = &b.store;
    let (record, flag, set, missing) = (
        Key::tenant("acme", "config", "probe-record"),
        Key::tenant("acme", "config", "probe-flag"),
        Key::tenant("acme", "config", "probe-set"),
        Key::tenant("acme", "config", "probe-missing"),
    );
    let all = |known: Option<&'static str>| {
        [
            (record.clone(), Probe::IfChanged(known)),
            (flag.clone(), Probe::Presence),
            (set.clone(), Probe::Members),
            (missing.clone(), Probe::IfChanged(None)),
        ]
    };
    let probe = |keys: [(Key, Probe<'static>); 4]| async move {
        let refs: Vec<(&Key, Probe<'_>)> = keys.iter().map(|(k, p)| (k, *p)).collect();
        s.read_many_if_changed(&refs).await.unwrap()
    };
    // Nothing stored: absent, not present, no members.
    assert_eq!(
        probe(all(None)).await,
        vec![
            Probed::Read(IfChanged::Absent),
            Probed::Present(false),
            Probed::Members(Vec::new()),
            Probed::Read(IfChanged::Absent),
        ]
    );
    s.put(&record, b"first", None).await.unwrap();
    s.put(&flag, b"1", None).await.unwrap();
    for m in ["c2", "c1", "c3"] {
        s.set_add(&set, m, None).await.unwrap();
    }
    let stored = s.fingerprint(&record).await.unwrap().expect("a fingerprint");
    let answers = probe(all(None)).await;
    assert_eq!(
        answers,
        vec![
            Probed::Read(IfChanged::Value {
                value: b"first".to_vec(),
                fingerprint: stored.clone(),
            }),
            Probed::Present(true),
            Probed::Members(vec!["c1".into(), "c2".into(), "c3".into()]),
            Probed::Read(IfChanged::Absent),
        ],
        "values with the fingerprint of the bytes as stored, members sorted, in the order asked"
    );
    // The caller's copy is current: nothing transferred.
    let known: &'static str = Box::leak(stored.clone().into_boxed_str());
    assert_eq!(
        probe(all(Some(known))).await.first(),
        Some(&Probed::Read(IfChanged::Unchanged))
    );
    assert!(matches!(
        probe(all(Some("0000000000000000000000000000000000000000")))
            .await
            .first(),
        Some(Probed::Read(IfChanged::Value { .. }))
    ));
    // A change is answered with its new fingerprint, as `get_if_changed` does.
    s.put(&record, b"second", None).await.unwrap();
    let Some(Probed::Read(IfChanged::Value { value, fingerprint })) = probe(all(Some(known))).await.first().cloned()
    else {
        panic!("a changed value is answered")
    };
    assert_eq!(value, b"second".to_vec());
    assert_ne!(fingerprint, stored);
    assert_eq!(
        s.get_if_changed(&record, Some(&fingerprint)).await.unwrap(),
        IfChanged::Unchanged
    );
    // A presence of another type is still a presence; the set is one.
    let refs = [(&set, Probe::Presence), (&record, Probe::Presence)];
    assert_eq!(
        s.read_many_if_changed(&refs).await.unwrap(),
        vec![Probed::Present(true), Probed::Present(true)]
    );
    // Expired keys are absent.
    let short = Key::tenant("acme", "config", "probe-short");
    s.put(&short, b"x", Some(SHORT)).await.unwrap();
    b.pass(PAST_SHORT).await;
    assert_eq!(
        s.read_many_if_changed(&[(&short, Probe::IfChanged(None)), (&short, Probe::Presence)])
            .await
            .unwrap(),
        vec![Probed::Read(IfChanged::Absent), Probed::Present(false)]
    );
    assert_eq!(s.read_many_if_changed(&[]).await.unwrap(), Vec::<Probed>::new());
    // Another type than the probe reads is corrupt.
    assert!(matches!(
        s.read_many_if_changed(&[(&set, Probe::IfChanged(None))]).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.read_many_if_changed(&[(&record, Probe::Members)]).await,
        Err(StoreError::Corrupt(_))
    ));
    // Keys of several hash tags are refused before anything is read.
    let other = Key::tenant("acme", "users", "user:u1");
    assert!(matches!(
        s.read_many_if_changed(&[(&record, Probe::IfChanged(None)), (&other, Probe::Presence)])
            .await,
        Err(StoreError::Corrupt(_))
    ));
}

async fn write_many_writes_keys_of_one_tag_in_one_step(b: &Backend) {
    let s = &b.store;
    let (family, token, index, gone) = (
        Key::tenant("acme", "rf:wm", "family"),
        Key::tenant("acme", "rf:wm", "tok:h1"),
        Key::tenant("acme", "rf:wm", "index"),
        Key::tenant("acme", "rf:wm", "gone"),
    );
    s.put(&gone, b"old", None).await.unwrap();
    s.write_many(&[
        Write::Put {
            key: &family,
            value: &[0u8, 255, b'{'],
            ttl: None,
        },
        Write::Put {
            key: &token,
            value: b"1",
            ttl: Some(SHORT),
        },
        Write::SetAdd {
            key: &index,
            member: "f1",
            ttl: Some(SHORT),
        },
        Write::Delete { key: &gone },
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&family).await.unwrap(), Some(vec![0u8, 255, b'{']));
    assert_eq!(s.get(&token).await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.set_members(&index).await.unwrap(), vec!["f1".to_owned()]);
    assert_eq!(s.get(&gone).await.unwrap(), None);
    // A set's TTL is extended, never shortened, as `set_add` does.
    s.write_many(&[Write::SetAdd {
        key: &index,
        member: "f2",
        ttl: Some(LONG),
    }])
    .await
    .unwrap();
    // Nothing at all is fine.
    s.write_many(&[]).await.unwrap();
    // The TTLs are each write's: the short token expires, the rest stays.
    b.pass(PAST_SHORT).await;
    assert_eq!(s.get(&token).await.unwrap(), None);
    assert_eq!(s.get(&family).await.unwrap(), Some(vec![0u8, 255, b'{']));
    assert_eq!(
        s.set_members(&index).await.unwrap(),
        vec!["f1".to_owned(), "f2".to_owned()]
    );
    // Keys of two hash tags are refused, and nothing is written.
    let elsewhere = Key::tenant("acme", "users", "families:u9");
    assert!(matches!(
        s.write_many(&[
            Write::Put {
                key: &token,
                value: b"2",
                ttl: None
            },
            Write::SetAdd {
                key: &elsewhere,
                member: "f3",
                ttl: None
            },
        ])
        .await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.get(&token).await.unwrap(), None);
    assert!(s.set_members(&elsewhere).await.unwrap().is_empty());
    // A set write over a value of another type is refused before anything
    // is written.
    let refused = s
        .write_many(&[
            Write::Put {
                key: &token,
                value: b"3",
                ttl: None,
            },
            Write::SetAdd {
                key: &family,
                member: "x",
                ttl: None,
            },
        ])
        .await;
    assert!(refused.is_err(), "a set add over a string: {refused:?}");
    assert_eq!(s.get(&token).await.unwrap(), None, "nothing written");
    assert_eq!(s.get(&family).await.unwrap(), Some(vec![0u8, 255, b'{']));
}

/// A `RequireAbsent` write is a condition of the whole: with its key
/// present nothing is written and the answer is `false`; once it is gone
/// (deleted or expired) everything is written and the answer is `true`.
async fn write_many_writes_nothing_while_a_required_absent_key_is_there(b: &Backend) {
    let s = &b.store;
    let (tombstone, family, token, gone) = (
        Key::tenant("acme", "rf:ra", "forbidden"),
        Key::tenant("acme", "rf:ra", "family"),
        Key::tenant("acme", "rf:ra", "tok:h1"),
        Key::tenant("acme", "rf:ra", "gone"),
    );
    let writes = [
        Write::RequireAbsent { key: &tombstone },
        Write::Put {
            key: &family,
            value: b"f",
            ttl: None,
        },
        Write::Put {
            key: &token,
            value: b"1",
            ttl: Some(LONG),
        },
        Write::Delete { key: &gone },
    ];
    s.put(&gone, b"old", None).await.unwrap();
    s.put(&tombstone, b"1", Some(SHORT)).await.unwrap();
    assert!(
        !s.write_many(&writes).await.unwrap(),
        "refused while the tombstone is there"
    );
    assert_eq!(s.get(&family).await.unwrap(), None);
    assert_eq!(s.get(&token).await.unwrap(), None);
    assert_eq!(
        s.get(&gone).await.unwrap(),
        Some(b"old".to_vec()),
        "not even the delete"
    );
    assert_eq!(
        s.get(&tombstone).await.unwrap(),
        Some(b"1".to_vec()),
        "the condition writes nothing"
    );
    // The tombstone expired: everything is written.
    b.pass(PAST_SHORT).await;
    assert!(s.write_many(&writes).await.unwrap());
    assert_eq!(s.get(&family).await.unwrap(), Some(b"f".to_vec()));
    assert_eq!(s.get(&token).await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.get(&gone).await.unwrap(), None);
    assert_eq!(s.get(&tombstone).await.unwrap(), None);
    // The tombstone and the family's delete in one step, as a replayed
    // code forbids a family: its start is refused from then on.
    assert!(s
        .write_many(&[
            Write::Put {
                key: &tombstone,
                value: b"1",
                ttl: None
            },
            Write::Delete { key: &family },
        ])
        .await
        .unwrap());
    assert_eq!(s.get(&family).await.unwrap(), None);
    assert!(!s.write_many(&writes).await.unwrap());
    assert_eq!(s.get(&family).await.unwrap(), None);
}

/// A `RequireValue` write is a compare-and-set of the whole: written only
/// while its key holds exactly that value (never when absent, nor when it
/// holds another type), so of two writers that read the same record one
/// wins and the other writes nothing, not even its companions. Through
/// the sealing wrapper, the record (sealed at rest) is compared by its
/// opening.
async fn write_many_writes_only_while_a_required_value_is_there(b: &Backend) {
    let s = &b.store;
    let (record, companion, set) = (
        Key::tenant("acme", "config", "connection:rv"),
        Key::tenant("acme", "config", "incarnation:rv"),
        Key::tenant("acme", "config", "set:rv"),
    );
    let (v1, v2, v3) = (
        br#"{"client_secret":"one","id":"rv","revision":1}"#.as_slice(),
        br#"{"client_secret":"two","id":"rv","revision":2}"#.as_slice(),
        br#"{"client_secret":"three","id":"rv","revision":3}"#.as_slice(),
    );
    let swap = |expected: &'static [u8], value: &'static [u8], inc: &'static [u8]| {
        [
            Write::RequireValue {
                key: &record,
                value: expected,
            },
            Write::Put {
                key: &record,
                value,
                ttl: None,
            },
            Write::Put {
                key: &companion,
                value: inc,
                ttl: None,
            },
        ]
    };
    // Absent never matches.
    assert!(!s.write_many(&swap(v1, v2, b"i2")).await.unwrap(), "absent");
    assert_eq!(s.get(&record).await.unwrap(), None);
    assert_eq!(s.get(&companion).await.unwrap(), None, "no companion either");
    s.put(&record, v1, None).await.unwrap();
    s.put(&companion, b"i1", None).await.unwrap();
    let read = s.get(&record).await.unwrap().unwrap();
    // Keys in order, so the sealing wrapper's opening is byte for byte
    // what was written.
    assert_eq!(read, v1, "read back opened");
    // The first writer holding the reading wins, with its companion.
    assert!(s.write_many(&swap(v1, v2, b"i2")).await.unwrap());
    assert_eq!(s.get(&record).await.unwrap().as_deref(), Some(v2));
    assert_eq!(s.get(&companion).await.unwrap().as_deref(), Some(b"i2".as_slice()));
    // A second writer holding the same, now old, reading writes nothing.
    assert!(
        !s.write_many(&swap(v1, v3, b"i3")).await.unwrap(),
        "a stale reading loses"
    );
    assert_eq!(s.get(&record).await.unwrap().as_deref(), Some(v2));
    assert_eq!(
        s.get(&companion).await.unwrap().as_deref(),
        Some(b"i2".as_slice()),
        "the loser's companion is not written"
    );
    // A value of another type never matches, and nothing is written.
    s.set_add(&set, "m", None).await.unwrap();
    let on_a_set = [
        Write::RequireValue { key: &set, value: b"m" },
        Write::Put {
            key: &companion,
            value: b"i4",
            ttl: None,
        },
    ];
    assert!(!s.write_many(&on_a_set).await.unwrap());
    assert_eq!(s.get(&companion).await.unwrap().as_deref(), Some(b"i2".as_slice()));
    // Concurrent writers from one reading: exactly one wins.
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let (s, record) = (b.store.clone(), record.clone());
        racers.spawn(async move {
            let value = format!(r#"{{"client_secret":"c{i}","id":"rv","revision":9}}"#);
            s.write_many(&[
                Write::RequireValue {
                    key: &record,
                    value: v2,
                },
                Write::Put {
                    key: &record,
                    value: value.as_bytes(),
                    ttl: None,
                },
            ])
            .await
            .unwrap()
        });
    }
    let outcomes = racers.join_all().await;
    assert_eq!(outcomes.iter().filter(|w| **w).count(), 1, "{outcomes:?}");
}

/// The sealing wrapper seals what `put` seals, so a sealed record written
/// with `write_many` reads back (opened) like one written with `put`.
async fn write_many_seals_what_put_seals(b: &Backend) {
    let s = &b.store;
    let (record, other) = (
        Key::tenant("acme", "config", "connection:wm"),
        Key::tenant("acme", "config", "note:wm"),
    );
    let value = br#"{"id":"wm","client_secret":"s3cret"}"#;
    s.write_many(&[
        Write::Put {
            key: &record,
            value,
            ttl: None,
        },
        Write::Put {
            key: &other,
            value: b"plain",
            ttl: None,
        },
    ])
    .await
    .unwrap();
    let read: serde_json::Value = serde_json::from_slice(&s.get(&record).await.unwrap().unwrap()).unwrap();
    assert_eq!(read["client_secret"], "s3cret");
    assert_eq!(s.get(&other).await.unwrap(), Some(b"plain".to_vec()));
}

fn rotation<'a>(family: &'a Key, token: &'a Key, marker: &'a Key, next: &'a Key, value: &'a [u8]) -> Rotate<'a> {
    Rotate {
        key: token,
        marker_key: marker,
        marker_value: b"used",
        marker_ttl: LONG,
        requires: family,
        next_key: next,
        next_value: value,
        next_ttl: Some(LONG),
    }
}

async fn rotate_takes_once_and_writes_the_next_only_when_taken(b: &Backend) {
    let s = &b.store;
    let (family, token, marker, next) = (
        Key::tenant("acme", "rf:rot", "family"),
        Key::tenant("acme", "rf:rot", "tok:h1"),
        Key::tenant("acme", "rf:rot", "used:h1"),
        Key::tenant("acme", "rf:rot", "tok:h2"),
    );
    let r = rotation(&family, &token, &marker, &next, b"next");
    // Without the family nothing happens, even with the token there.
    s.put(&token, b"1", Some(LONG)).await.unwrap();
    assert_eq!(s.rotate(&r).await.unwrap(), Taken::Absent);
    assert_eq!(s.get(&token).await.unwrap(), Some(b"1".to_vec()), "not consumed");
    assert_eq!(s.get(&marker).await.unwrap(), None);
    assert_eq!(s.get(&next).await.unwrap(), None, "no next token");
    // With it: taken, marked, and the next one written.
    s.put(&family, b"{}", Some(LONG)).await.unwrap();
    assert_eq!(s.rotate(&r).await.unwrap(), Taken::Value(b"1".to_vec()));
    assert_eq!(s.get(&token).await.unwrap(), None);
    assert_eq!(s.get(&marker).await.unwrap(), Some(b"used".to_vec()));
    assert_eq!(s.get(&next).await.unwrap(), Some(b"next".to_vec()));
    // A reuse sees the marker and writes nothing.
    let other_next = Key::tenant("acme", "rf:rot", "tok:h3");
    let again = rotation(&family, &token, &marker, &other_next, b"other");
    assert_eq!(s.rotate(&again).await.unwrap(), Taken::Marker(b"used".to_vec()));
    assert_eq!(s.get(&other_next).await.unwrap(), None);
    // Unknown: absent, nothing written.
    let (unknown, unknown_marker) = (
        Key::tenant("acme", "rf:rot", "tok:none"),
        Key::tenant("acme", "rf:rot", "used:none"),
    );
    let r = rotation(&family, &unknown, &unknown_marker, &other_next, b"other");
    assert_eq!(s.rotate(&r).await.unwrap(), Taken::Absent);
    assert_eq!(s.get(&unknown_marker).await.unwrap(), None);
    assert_eq!(s.get(&other_next).await.unwrap(), None);
    // The next token's TTL is the one given.
    let (t2, m2, n2) = (
        Key::tenant("acme", "rf:rot", "tok:t2"),
        Key::tenant("acme", "rf:rot", "used:t2"),
        Key::tenant("acme", "rf:rot", "tok:n2"),
    );
    s.put(&t2, b"1", Some(LONG)).await.unwrap();
    let short = Rotate {
        next_ttl: Some(SHORT),
        ..rotation(&family, &t2, &m2, &n2, b"n2")
    };
    assert_eq!(s.rotate(&short).await.unwrap(), Taken::Value(b"1".to_vec()));
    b.pass(PAST_SHORT).await;
    assert_eq!(s.get(&n2).await.unwrap(), None);
    // Keys of two hash tags are refused, and nothing is read or written.
    let (t3, elsewhere) = (
        Key::tenant("acme", "rf:rot", "tok:t3"),
        Key::tenant("acme", "rf:other", "tok:n3"),
    );
    s.put(&t3, b"1", Some(LONG)).await.unwrap();
    let m3 = Key::tenant("acme", "rf:rot", "used:t3");
    assert!(matches!(
        s.rotate(&rotation(&family, &t3, &m3, &elsewhere, b"n3")).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.get(&t3).await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.get(&elsewhere).await.unwrap(), None);
}

async fn concurrent_rotate_one_wins_and_writes_the_next_once(b: &Backend) {
    for round in 0..3 {
        let family = Key::tenant("acme", "rf:race", "family");
        let token = Key::tenant("acme", "rf:race", format!("tok:race-{round}"));
        let marker = Key::tenant("acme", "rf:race", format!("used:race-{round}"));
        b.store.put(&family, b"{}", Some(LONG)).await.unwrap();
        b.store.put(&token, b"token", Some(LONG)).await.unwrap();
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (s, family, token, marker, barrier) = (
                    b.store.clone(),
                    family.clone(),
                    token.clone(),
                    marker.clone(),
                    barrier.clone(),
                );
                tokio::spawn(async move {
                    let next = Key::tenant("acme", "rf:race", format!("tok:next-{round}-{i}"));
                    barrier.wait().await;
                    s.rotate(&rotation(&family, &token, &marker, &next, b"next"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Taken::Value(v) => {
                    assert_eq!(v, b"token");
                    won += 1;
                }
                Taken::Marker(m) => assert_eq!(m, b"used"),
                Taken::Absent => panic!("a racer saw neither the token nor its marker"),
            }
        }
        assert_eq!(won, 1, "exactly one rotation");
        let mut written = 0;
        for i in 0..RACERS {
            let next = Key::tenant("acme", "rf:race", format!("tok:next-{round}-{i}"));
            if b.store.get(&next).await.unwrap().is_some() {
                written += 1;
            }
        }
        assert_eq!(written, 1, "exactly one next token");
    }
}

async fn read_through_reads_a_pointer_and_what_it_names_in_one_step(b: &Backend) {
    let s = &b.store;
    let link = Key::tenant("acme", "users", "link:c1:h1");
    let reads = [("user:", Read::Value), ("disabled:", Read::Presence)];
    // No pointer: nothing.
    assert_eq!(s.read_through(&link, &reads).await.unwrap(), None);
    // A pointer to nothing: the pointer, and absences.
    s.put(&link, b"u_1", None).await.unwrap();
    assert_eq!(
        s.read_through(&link, &reads).await.unwrap(),
        Some((b"u_1".to_vec(), vec![None, None]))
    );
    // What it names, in the pointer's tag: a value and a presence.
    let user = Key::tenant("acme", "users", "user:u_1");
    let flag = Key::tenant("acme", "users", "disabled:u_1");
    s.put(&user, &[0u8, 255, b'{'], None).await.unwrap();
    assert_eq!(
        s.read_through(&link, &reads).await.unwrap(),
        Some((b"u_1".to_vec(), vec![Some(vec![0u8, 255, b'{']), None]))
    );
    s.put(&flag, b"1", None).await.unwrap();
    assert_eq!(
        s.read_through(&link, &reads).await.unwrap(),
        Some((b"u_1".to_vec(), vec![Some(vec![0u8, 255, b'{']), Some(Vec::new())])),
        "a presence, not the value"
    );
    // The same names in another tag are not read.
    let other = Key::tenant("other", "users", "link:c1:h1");
    s.put(&other, b"u_1", None).await.unwrap();
    assert_eq!(
        s.read_through(&other, &reads).await.unwrap(),
        Some((b"u_1".to_vec(), vec![None, None]))
    );
    // Nothing to read through: only the pointer.
    assert_eq!(
        s.read_through(&link, &[]).await.unwrap(),
        Some((b"u_1".to_vec(), Vec::new()))
    );
    // Expired names are absent.
    let short = Key::tenant("acme", "users", "link:c1:h2");
    s.put(&short, b"u_2", None).await.unwrap();
    s.put(&Key::tenant("acme", "users", "user:u_2"), b"x", Some(SHORT))
        .await
        .unwrap();
    b.pass(PAST_SHORT).await;
    assert_eq!(
        s.read_through(&short, &reads).await.unwrap(),
        Some((b"u_2".to_vec(), vec![None, None]))
    );
}

/// Key names carry strings from outside (an IdP's subject is hashed, but
/// login ids, tickets and domains are not): a name holding the key
/// format's separators, a hash tag's braces, a SCAN pattern's `*`, `?` and
/// `[`, NUL, a newline or 10,000 bytes is a key of its own, in its tag's
/// slot (one script over all of them runs on a Cluster), and a pointer
/// whose value is `*` reads only what is named `*`.
async fn names_with_separators_and_pattern_characters_are_keys_of_their_own(b: &Backend) {
    let s = &b.store;
    let long = "n".repeat(10_000);
    let names: Vec<String> = [
        "",
        "a",
        "a:",
        ":a",
        "a:b",
        "a}",
        "{a}",
        "}{",
        "*",
        "a*",
        "?",
        "[a]",
        "a\0",
        "a\nb",
        "%2A",
        "a/b",
        "t:other:users",
    ]
    .iter()
    .map(|n| (*n).to_owned())
    .chain([long])
    .collect();
    let keys: Vec<Key> = names
        .iter()
        .map(|n| Key::tenant("acme", "names", format!("x:{n}")))
        .collect();
    let values: Vec<Vec<u8>> = (0..keys.len()).map(|i| format!("v{i}").into_bytes()).collect();
    let writes: Vec<Write<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| Write::Put {
            key,
            value,
            ttl: Some(LONG),
        })
        .collect();
    s.write_many(&writes).await.unwrap();
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(s.get(key).await.unwrap().as_ref(), Some(value), "{:?}", key.name());
    }
    // Deleting `*` deletes that key only.
    let star = names.iter().position(|n| n == "*").unwrap();
    assert!(s.delete(&keys[star]).await.unwrap());
    for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
        let expected = (i != star).then(|| value.clone());
        assert_eq!(s.get(key).await.unwrap(), expected, "{:?}", key.name());
    }
    // The same name in another tenant's tag is another key.
    assert_eq!(s.get(&Key::tenant("acm", "names", "x:a")).await.unwrap(), None);
    assert_eq!(s.get(&Key::tenant("acme-2", "names", "x:a")).await.unwrap(), None);
    // A set member is a member, not a pattern.
    let set = Key::tenant("acme", "names", "set");
    s.set_add(&set, "*", Some(LONG)).await.unwrap();
    s.set_add(&set, "a", Some(LONG)).await.unwrap();
    s.set_remove(&set, "*").await.unwrap();
    assert_eq!(s.set_members(&set).await.unwrap(), vec!["a".to_owned()]);
    // A pointer whose value is `*` reads `user:*`, never `user:a`.
    let link = Key::tenant("acme", "names", "link:star");
    s.put(&link, b"*", Some(LONG)).await.unwrap();
    s.put(&Key::tenant("acme", "names", "user:a"), b"someone else", Some(LONG))
        .await
        .unwrap();
    let reads = [("user:", Read::Value)];
    assert_eq!(
        s.read_through(&link, &reads).await.unwrap(),
        Some((b"*".to_vec(), vec![None]))
    );
}
