//! The load generator's CI smoke run: every scenario of `portcullis-load`
//! for about a second at low concurrency against a gateway on a real Redis,
//! closed loop and (for the scenarios with their own pacing logic) open
//! loop; every request must have succeeded. No timing is asserted.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis;
use crate::support::round_robin::spawn_unproxied_pair;
use portcullis_load::{Alg, Options, Scenario};

/// The gateway's options for a run: a real Redis, limits out of the way.
fn options() -> AppOptions {
    AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        // One generator is one client address: limits as high as the
        // configuration allows, so the limiter still runs on every request
        // (as in `scripts/perf`) but never refuses one.
        tweak: Some(|s| {
            for class in [
                &mut s.throttle.authorize,
                &mut s.throttle.callback,
                &mut s.throttle.token,
                &mut s.throttle.portal,
                &mut s.throttle.admin,
            ] {
                class.per_ip = 1_000_000;
                class.per_tenant = 1_000_000;
                class.window_secs = 60;
            }
        }),
        ..AppOptions::default()
    }
}

async fn gateway() -> TestApp {
    spawn_app(options()).await
}

/// A short, low-concurrency run against `app`, its CPU read from this
/// process (the gateway runs in it).
fn smoke(app: &TestApp) -> Options {
    let mut opts = Options::new(app.base.clone(), &app.admin_token);
    opts.duration = 1.0;
    opts.warmup = 0.0;
    opts.concurrency = 2;
    opts.users = 3;
    opts.pool = Some(200);
    opts.code_pool = Some(200);
    opts.gateway_pid = vec![std::process::id()];
    opts.alg = Some(Alg::RS256);
    opts
}

fn assert_all_succeeded(report: &portcullis_load::Report, scenarios: &[Scenario]) {
    assert_eq!(report.errors(), 0, "{report:#?}");
    assert_eq!(report.shed(), 0, "nothing is shed at smoke-test rates: {report:#?}");
    assert_eq!(report.gateway_alg.as_deref(), Some("RS256"));
    let ran: Vec<Scenario> = report.scenarios.iter().map(|s| s.scenario).collect();
    assert_eq!(ran, scenarios);
    // The machine's yardstick before and after, on the gateway's CPUs
    // (here this process's).
    let gateway_cpus = portcullis_load::engine::allowed_cpus(std::process::id()).unwrap_or_default();
    for y in [&report.machine_before, &report.machine_after] {
        let y = y.as_ref().expect("a machine yardstick before and after the run");
        assert_eq!(y.cpus, gateway_cpus, "{y:?}");
        assert!(y.p256_sign_us > 0.0, "{y:?}");
        let sizes: Vec<usize> = y.memory_latency_ns.iter().map(|m| m.0).collect();
        assert_eq!(sizes, portcullis_load::machine::CHASE_KIB, "{y:?}");
        assert!(y.memory_latency_ns.iter().all(|m| m.1 > 0.0), "{y:?}");
    }
    for s in &report.scenarios {
        assert!(s.ok > 0, "{} did nothing: {s:#?}", s.scenario.name());
        assert!(s.error_samples.is_empty(), "{s:#?}");
        assert!(s.gateway_cpu_s.is_some(), "no CPU time read for {}", s.scenario.name());
        // The generator's own CPU time and how busy both sides' CPUs were.
        // When the gateway runs inside the generator's process, the same
        // CPU time, read at the same moments: a tick or two apart at most
        // per window.
        let (gateway, generator) = (s.gateway_cpu_s.unwrap_or(-1.0), s.generator_cpu_s.unwrap_or(-1.0));
        assert!(generator >= 0.0, "{}: no generator CPU time", s.scenario.name());
        if report.gateway_pids == [std::process::id()] {
            let windows = 2.0 * (s.stages.len() + 1) as f64;
            assert!(
                (gateway - generator).abs() <= 0.02 * windows,
                "{}: gateway {gateway} s, generator {generator} s",
                s.scenario.name()
            );
        }
        for busy in [s.gateway_cpus_busy, s.generator_cpus_busy] {
            assert!(
                busy.is_some_and(|b| (0.0..=1.0).contains(&b)),
                "{}: CPUs busy {busy:?}",
                s.scenario.name()
            );
        }
        assert!(
            s.latency_ms.p50 > 0.0 && s.latency_ms.p99_9 >= s.latency_ms.p50,
            "{s:#?}"
        );
        // Every stage's successes are accounted for: a sign-in counts only
        // when both its halves succeeded.
        if matches!(s.scenario, Scenario::SamlSignin | Scenario::OidcSignin) {
            let authorized: u64 = s.stages.iter().step_by(2).map(|st| st.ok).sum();
            let finished: u64 = s.stages.iter().skip(1).step_by(2).map(|st| st.ok).sum();
            assert_eq!((authorized, finished), (s.ok, s.ok), "{s:#?}");
        }
    }
    // Each scenario's measured run on CLOCK_MONOTONIC (what `scripts/perf`
    // cuts a recording and callgrind's dumps by): it holds the timed stages
    // (a preparation before them through the gateway, such as code-grant's
    // minting, is not in it), and the runs follow each other without
    // overlapping.
    let windows: Vec<[f64; 2]> = report
        .scenarios
        .iter()
        .map(|s| {
            s.monotonic_window_s
                .unwrap_or_else(|| panic!("no window for {}", s.scenario.name()))
        })
        .collect();
    for (s, [start, end]) in report.scenarios.iter().zip(&windows) {
        assert!(
            end - start >= s.elapsed_s,
            "{} ran {}-{}: {s:#?}",
            s.scenario.name(),
            start,
            end
        );
        let stages: Vec<[f64; 2]> = s
            .stages
            .iter()
            .map(|st| {
                st.monotonic_s
                    .unwrap_or_else(|| panic!("no window for a stage of {}", s.scenario.name()))
            })
            .collect();
        for [a, b] in &stages {
            assert!(
                start <= a && a <= b && b <= end,
                "{} stage {a}-{b} outside {start}-{end}",
                s.scenario.name()
            );
        }
        if s.stages.len() == 1 && s.prepare_s > 0.0 {
            // One stage after a preparation: the window is that stage
            // (microseconds more than its timing), not the preparation too.
            assert!(
                end - start < s.elapsed_s + s.prepare_s,
                "{} ran {start}-{end}, timed {} s, prepared {} s",
                s.scenario.name(),
                s.elapsed_s,
                s.prepare_s
            );
        }
    }
    for pair in windows.windows(2) {
        assert!(pair[1][0] >= pair[0][1], "overlapping runs: {windows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_of_the_load_generator_succeeds_closed_loop() {
    let app = gateway().await;
    let opts = smoke(&app);
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &Scenario::ALL);
    // Closed loop has no intended send times: no lag is reported.
    for s in &report.scenarios {
        assert!(
            s.stages
                .iter()
                .all(|st| st.send_lag_ms.is_none() && st.slowest.is_none()),
            "{s:#?}"
        );
        assert_eq!(s.lag_line(), "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_ins_and_refresh_rotation_succeed_open_loop() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.rate = Some(20.0);
    let scenarios = vec![
        Scenario::SamlSignin,
        Scenario::SamlAcs,
        Scenario::OidcSignin,
        Scenario::Refresh,
        Scenario::CodeGrant,
    ];
    opts.scenario = scenarios.clone();
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &scenarios);
    let acs = &report.scenarios[1];
    assert_eq!(acs.ok, 20, "rate × duration responses signed and posted: {acs:#?}");
    let codes = &report.scenarios[4];
    assert_eq!(codes.ok, 20, "rate × duration codes minted and redeemed: {codes:#?}");
    // Every stage says how late the generator started its requests, and
    // how the slowest one's latency divides between that lag and its answer.
    for s in &report.scenarios {
        for st in &s.stages {
            let lag = st.send_lag_ms.as_ref().unwrap_or_else(|| panic!("no lag: {s:#?}"));
            assert!(lag.max >= lag.p99 && lag.max <= st.latency_ms.max * 1.002, "{st:#?}");
            let w = st.slowest.unwrap_or_else(|| panic!("no slowest request: {s:#?}"));
            let total = w.lag_ms + w.answer_ms;
            assert!(
                (total - st.latency_ms.max).abs() <= 0.002 * total + 0.002,
                "{w:?} against {st:#?}"
            );
            assert!((0.0..=st.elapsed_s).contains(&w.at_s), "{w:?} against {st:#?}");
        }
        assert!(s.lag_line().contains("lag p99="), "{}", s.lag_line());
    }
    // `--rate` is whole sign-ins per second: the second halves overlap the
    // next `/authorize`s, so a one-second window at 20/s completes 20
    // sign-ins (half as many when the halves took turns).
    for s in [&report.scenarios[0], &report.scenarios[2]] {
        assert_eq!(s.ok, 20, "rate × duration whole sign-ins: {s:#?}");
    }
    // The gateway's RSS, sampled every second over the run.
    assert!(!report.gateway_rss_kib_per_s.is_empty(), "no RSS sample");
    assert!(report.gateway_rss_kib_per_s.iter().all(|(_, kib)| *kib > 0));
    let summary = report.gateway_rss_summary.as_ref().expect("an RSS summary");
    assert!(summary.min_kib <= summary.max_kib);
    for s in &report.scenarios {
        assert!(s.started_s.is_some() && s.ended_s >= s.started_s, "{s:#?}");
        // And what that memory was at the end of each window, by kind: the
        // same process's, in the same unit as its RSS read beside it.
        let memory = s.gateway_memory.expect("the memory split at the end of the window");
        assert!(memory.anonymous_kib > 0 && memory.file_kib > 0, "{memory:?}");
        let rss = s.gateway_rss_kib.expect("the RSS at the end of the window");
        assert!(
            memory.resident_kib.abs_diff(rss) * 4 < rss,
            "{memory:?} against {rss} KiB"
        );
    }
}

/// `--round`: open loop, a window longer than a round runs in rounds, each
/// prepared (its second halves' `/authorize`s and the IdP's answers)
/// before it, so a prepared login is never left longer than a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sign_ins_run_in_rounds_each_prepared_before_it() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.rate = Some(20.0);
    opts.duration = 1.0;
    opts.round = 0.5;
    let scenarios = vec![Scenario::SamlSignin, Scenario::OidcSignin];
    opts.scenario = scenarios.clone();
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &scenarios);
    for s in &report.scenarios {
        assert_eq!(s.ok, 20, "rate × duration whole sign-ins over both rounds: {s:#?}");
        let names: Vec<&str> = s.stages.iter().map(|st| st.name.as_str()).collect();
        let second = if s.scenario == Scenario::SamlSignin {
            "acs+continue+token"
        } else {
            "callback+token"
        };
        assert_eq!(names, ["authorize", second, "authorize", second], "two rounds: {s:#?}");
        // Each round's halves: ten fresh `/authorize`s and ten prepared second halves.
        assert!(s.stages.iter().all(|st| st.ok == 10), "{s:#?}");
        assert!(s.prepare_s > 0.0, "each round was prepared: {s:#?}");
        // The second round's stages start after the first round's end.
        let w: Vec<[f64; 2]> = s
            .stages
            .iter()
            .map(|st| st.monotonic_s.expect("a stage window"))
            .collect();
        assert!(w[2][0] >= w[0][1].max(w[1][1]), "{w:?}");
    }
}

/// `--replica`: two replicas on one Redis with one public URL, every
/// request to the next replica in turn (no stickiness), so a sign-in's
/// `/authorize`, ACS, continuation and `/token` alternate between them;
/// every scenario still succeeds, and both replicas were sent their half.
/// The Redis server is this test's own, so its CPU time (`--redis-pid`) is
/// what the run cost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_succeeds_with_requests_alternating_between_two_replicas() {
    let server = redis::RedisServer::start();
    let (a, _b, listen) = spawn_unproxied_pair(AppOptions {
        redis_url: Some(server.url()),
        ..options()
    })
    .await;
    let mut opts = smoke(&a);
    opts.replicas = listen.to_vec();
    opts.redis_pid = Some(server.pid());
    opts.redis_url = Some(server.url());
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &Scenario::ALL);
    // `--redis-url`: the commands Redis ran per operation. Every sign-in
    // and every token grant runs the store's scripts (`evalsha`: at least
    // the rate limit and a re-validated record).
    for s in &report.scenarios {
        if matches!(
            s.scenario,
            Scenario::SamlSignin | Scenario::SamlAcs | Scenario::OidcSignin | Scenario::CodeGrant | Scenario::Refresh
        ) {
            let scripts = s.redis_commands_per_op.get("evalsha").map_or(0.0, |c| c.calls);
            assert!(scripts >= 2.0, "{}: {:#?}", s.scenario.name(), s.redis_commands_per_op);
        }
        for (name, c) in &s.redis_commands_per_op {
            assert!(c.calls > 0.0 && c.usec >= 0.0, "{name}: {c:?}");
        }
    }
    for s in &report.scenarios {
        let redis = s
            .redis_cpu_s
            .unwrap_or_else(|| panic!("no Redis CPU time for {}", s.scenario.name()));
        assert!(redis >= 0.0, "{s:#?}");
        assert!(s.redis_cpu_ms_per_op.is_some(), "{s:#?}");
    }
    assert!(
        report.scenarios.iter().any(|s| s.redis_cpu_s > Some(0.0)),
        "Redis was charged no CPU at all: {:#?}",
        report.scenarios
    );
    let sent: Vec<(String, u64)> = report
        .replicas
        .iter()
        .map(|r| (r.address.clone(), r.requests))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].0, listen[0].to_string());
    assert_eq!(sent[1].0, listen[1].to_string());
    // Round robin: the two counts differ by at most one, and each replica
    // served thousands of requests, not a setup call or two.
    assert!(sent[0].1.abs_diff(sent[1].1) <= 1, "{sent:?}");
    assert!(sent[0].1 > 100, "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_spread_over_several_tenants() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.tenants = 3;
    opts.users = 6;
    let scenarios = vec![Scenario::SamlSignin, Scenario::OidcSignin];
    opts.scenario = scenarios.clone();
    // By default, one untimed sign-in per tenant and protocol comes before
    // the first window.
    let warm = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&warm, &scenarios);
    assert_eq!(warm.tenants.len(), 3, "{:?}", warm.tenants);
    assert_eq!(warm.tenant_warmup_signins, 6);
    // `--cold-tenants`: none, so only the measured sign-ins reach the
    // (new) tenants.
    opts.cold_tenants = true;
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &scenarios);
    assert_eq!(report.tenant_warmup_signins, 0);
    assert_eq!(report.tenants.len(), 3, "{:?}", report.tenants);
    assert!(
        report.tenants.iter().all(|t| !warm.tenants.contains(t)),
        "a run's tenants are its own"
    );
    // Every tenant got users from the measured sign-ins.
    for t in &report.tenants {
        let users = app
            .client
            .get(app.url(&format!("/admin/v1/tenants/{t}/users")))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        let n = users["users"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "tenant {t} has no users: {users}");
    }
}

/// `--idp-certificates 3`: the SAML connections trust three certificates,
/// the signing one last; every sign-in and IdP-initiated Response is still
/// accepted (the Response names its certificate), and the report says what
/// the connections were created with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_succeed_with_the_signing_certificate_last_of_three_in_the_metadata() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.idp_certificates = 3;
    let scenarios = vec![Scenario::SamlSignin, Scenario::SamlAcs];
    opts.scenario = scenarios.clone();
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &scenarios);
    assert_eq!(report.idp_certificates, 3);
    let t = portcullis::ids::TenantId::parse(&report.tenants[0]).unwrap();
    for id in ["saml", "saml-idp"] {
        let c = portcullis::ids::ConnectionId::parse(id).unwrap();
        let stored = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
        let stored = serde_json::to_value(&stored).unwrap();
        let certs = stored["idp_certificates"].as_array().unwrap();
        assert_eq!(certs.len(), 3, "{id}: {stored}");
        let distinct: std::collections::BTreeSet<_> = certs.iter().filter_map(|c| c.as_str()).collect();
        assert_eq!(distinct.len(), 3, "{id}: three different certificates");
        assert_eq!(
            stored["metadata_xml"].as_str().map(str::len),
            Some(report.idp_metadata_bytes)
        );
    }
}

/// `--response-bytes 65536`: every SAML Response is padded to 64 KB inside
/// its signed Assertion (an attribute no connection maps); every sign-in and
/// IdP-initiated Response is still accepted, so the gateway digested every
/// byte of each, and the report says how large they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_succeed_with_responses_padded_to_64_kb() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.response_bytes = Some(65_536);
    let scenarios = vec![Scenario::SamlSignin, Scenario::SamlAcs];
    opts.scenario = scenarios.clone();
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &scenarios);
    let bytes = report.saml_response_bytes;
    assert!((65_536..65_536 + 200).contains(&bytes), "{bytes} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_tenants_and_users_are_what_the_gateway_reads() {
    let prefix = redis::prefix();
    let app = spawn_app(AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(prefix.clone()),
        ..AppOptions::default()
    })
    .await;
    let opts = portcullis_load::seed::SeedOptions {
        redis_url: redis::url(),
        prefix,
        tenants: 3,
        users: 7,
        batch: 4,
    };
    let done = tokio::task::spawn_blocking(move || portcullis_load::seed::seed(&opts))
        .await
        .unwrap()
        .expect("seeded");
    assert_eq!((done.tenants, done.users, done.tenant_sample.len()), (3, 7, 3));
    let get = |path: String| {
        let app = app.clone();
        async move {
            let resp = app
                .client
                .get(app.url(&path))
                .bearer_auth(&app.admin_token)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let mut users = 0;
    for t in &done.tenant_sample {
        let (status, tenant) = get(format!("/admin/v1/tenants/{t}")).await;
        assert_eq!(status, 200, "{tenant}");
        assert_eq!(tenant["id"], t.as_str());
        let (status, list) = get(format!("/admin/v1/tenants/{t}/users")).await;
        assert_eq!(status, 200, "{list}");
        let page = list["users"].as_array().expect("users");
        for u in page {
            let sub = u["sub"].as_str().expect("sub");
            let (status, one) = get(format!("/admin/v1/tenants/{t}/users/{sub}")).await;
            assert_eq!(status, 200, "{one}");
            assert_eq!(one["tenant"], t.as_str());
        }
        users += page.len();
    }
    assert_eq!(users, 7, "7 users over 3 tenants");
    // The seeded tenants are in the tenant index the admin API pages through.
    let (status, all) = get("/admin/v1/tenants?limit=100".into()).await;
    assert_eq!(status, 200, "{all}");
    let listed = all.to_string();
    assert!(done.tenant_sample.iter().all(|t| listed.contains(t.as_str())), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_alg_flag_is_refused_before_anything_is_measured() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.alg = Some(Alg::ES256);
    opts.scenario = vec![Scenario::Jwks];
    let err = portcullis_load::run(&opts)
        .await
        .expect_err("RS256 gateway, --alg ES256");
    assert!(err.contains("--alg ES256") && err.contains("RS256"), "{err}");
}

/// Codes minted ahead of the window must still be alive when it ends: with
/// a pool larger than can be minted in the codes' lifetime (here the
/// generator is told they live 2 s), minting stops in time, the window
/// redeems what was minted (ending early when they run out), and no code
/// is redeemed expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_codes_ahead_stops_before_the_first_would_expire() {
    let app = gateway().await;
    let mut opts = smoke(&app);
    opts.scenario = vec![Scenario::CodeGrant];
    opts.code_pool = Some(50_000);
    opts.code_ttl = 2;
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &[Scenario::CodeGrant]);
    let s = &report.scenarios[0];
    assert!(
        s.prepare_s < 2.0,
        "minting ran {:.1} s, past what keeps the first code alive",
        s.prepare_s
    );
    assert!(s.ok < 50_000, "{s:#?}");
}

/// `--pause-after-setup`: the generator sets up, creates the file and
/// waits; no scenario runs until the file says `resume` with the gateway's
/// process ids (here the Redis server's, an outside process, so the switch
/// shows), and the scenarios are then charged to those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_waits_after_its_setup_until_told_the_gateways_new_pids() {
    let server = redis::RedisServer::start();
    let app = spawn_app(AppOptions {
        redis_url: Some(server.url()),
        ..options()
    })
    .await;
    let file = std::env::temp_dir().join(format!(
        "portcullis-load-paused-{}-{}",
        std::process::id(),
        redis::prefix()
    ));
    let _ignored = std::fs::remove_file(&file);
    let mut opts = smoke(&app);
    let scenarios = vec![Scenario::SamlSignin, Scenario::Refresh];
    opts.scenario = scenarios.clone();
    opts.pause_after_setup = Some(file.clone());
    let (watch, pid) = (file.clone(), server.pid());
    let resumer = tokio::spawn(async move {
        while !watch.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Still paused a while later: nothing runs before the resume.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let resumed_at = portcullis_load::engine::monotonic_s().expect("CLOCK_MONOTONIC");
        std::fs::write(&watch, format!("resume {pid}\n")).expect("the pause file is writable");
        resumed_at
    });
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    let resumed_at = resumer.await.expect("the resumer");
    let _ignored = std::fs::remove_file(&file);
    assert_all_succeeded(&report, &scenarios);
    assert_eq!(report.gateway_pids, vec![server.pid()]);
    for s in &report.scenarios {
        let [start, _] = s.monotonic_window_s.expect("a window");
        assert!(
            start >= resumed_at,
            "{} started at {start}, resumed at {resumed_at}",
            s.scenario.name()
        );
    }
}
