//! The load generator's CI smoke run: every scenario of `portcullis-load`
//! for about a second at low concurrency against a gateway on a real Redis,
//! closed loop and (for the scenarios with their own pacing logic) open
//! loop; every request must have succeeded. No timing is asserted.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::redis;
use portcullis_load::{Alg, Options, Scenario};

async fn gateway() -> TestApp {
    spawn_app(AppOptions {
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
    })
    .await
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
    opts.gateway_pid = Some(std::process::id());
    opts.alg = Some(Alg::RS256);
    opts
}

fn assert_all_succeeded(report: &portcullis_load::Report, scenarios: &[Scenario]) {
    assert_eq!(report.errors(), 0, "{report:#?}");
    assert_eq!(report.gateway_alg.as_deref(), Some("RS256"));
    let ran: Vec<Scenario> = report.scenarios.iter().map(|s| s.scenario).collect();
    assert_eq!(ran, scenarios);
    for s in &report.scenarios {
        assert!(s.ok > 0, "{} did nothing: {s:#?}", s.scenario.name());
        assert!(s.error_samples.is_empty(), "{s:#?}");
        assert!(s.gateway_cpu_s.is_some(), "no CPU time read for {}", s.scenario.name());
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_of_the_load_generator_succeeds_closed_loop() {
    let app = gateway().await;
    let opts = smoke(&app);
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &Scenario::ALL);
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
    ];
    opts.scenario = scenarios.clone();
    let report = portcullis_load::run(&opts).await.expect("the generator's setup");
    assert_all_succeeded(&report, &scenarios);
    let acs = &report.scenarios[1];
    assert_eq!(acs.ok, 20, "rate × duration responses signed and posted: {acs:#?}");
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
