//! Atomic single use (trust issue, point 6), proven over a real Redis
//! through the HTTP token endpoint: concurrent reuses of one refresh token
//! or one code are always detected as reuse and revoke what was issued.

use crate::revocation::{introspect, redeem, refresh, register, sign_in, userinfo_status, Rp, Tokens, DEMO};
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::Browser;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Barrier;

/// How many requests race.
const RACERS: usize = 20;

async fn redis_dev_app() -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        redis_url: Some(crate::support::redis::url()),
        redis_prefix: Some(crate::support::redis::prefix()),
        ..AppOptions::default()
    })
    .await
}

/// Runs `RACERS` copies of `one` released together; returns every answer.
async fn race<F, Fut>(one: F) -> Vec<Tokens>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Tokens> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let fut = one();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_revoke_the_family() {
    let app = Arc::new(redis_dev_app().await);
    let rp: Arc<Rp> = Arc::new(register(&app, "racer").await);
    for round in 0..3 {
        let first = redeem(
            &app,
            &rp,
            &sign_in(&app, &mut Browser::new(), &rp, DEMO, &format!("r{round}@demo.example")).await,
        )
        .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        let rt = first.rt().to_owned();
        let answers = race(|| {
            let (app, rp, rt) = (app.clone(), rp.clone(), rt.clone());
            async move { refresh(&app, &rp, &rt).await }
        })
        .await;
        let winners: Vec<&Tokens> = answers.iter().filter(|t| t.status == StatusCode::OK).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one refresh succeeds");
        for t in answers.iter().filter(|t| t.status != StatusCode::OK) {
            assert_eq!(t.status, StatusCode::BAD_REQUEST, "{}", t.body);
            assert_eq!(t.error(), Some("invalid_grant"), "{}", t.body);
        }
        // Every loser saw the used marker: the family is revoked, so even the
        // winner's new refresh token is dead.
        let winner_rt = winners[0].rt().to_owned();
        assert_eq!(introspect(&app, &rp, &winner_rt).await, json!({"active": false}));
        let after = refresh(&app, &rp, &winner_rt).await;
        assert_eq!(after.error(), Some("invalid_grant"), "round {round}: {}", after.body);
        assert_eq!(
            after.description(),
            "The refresh token is invalid, expired or revoked.",
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redemptions_of_one_code_revoke_what_it_issued() {
    let app = Arc::new(redis_dev_app().await);
    let rp: Arc<Rp> = Arc::new(register(&app, "racer").await);
    for round in 0..3 {
        let code = Arc::new(sign_in(&app, &mut Browser::new(), &rp, DEMO, &format!("c{round}@demo.example")).await);
        let answers = race(|| {
            let (app, rp, code) = (app.clone(), rp.clone(), code.clone());
            async move { redeem(&app, &rp, &code).await }
        })
        .await;
        let winners: Vec<&Tokens> = answers.iter().filter(|t| t.status == StatusCode::OK).collect();
        assert!(winners.len() <= 1, "round {round}: at most one redemption succeeds");
        let losers: Vec<&Tokens> = answers.iter().filter(|t| t.status != StatusCode::OK).collect();
        assert_eq!(losers.len(), RACERS - winners.len());
        for t in &losers {
            assert_eq!(t.error(), Some("invalid_grant"), "{}", t.body);
            assert_eq!(
                t.description(),
                "The authorization code was already used.",
                "{}",
                t.body
            );
        }
        // Whatever the winner got is revoked: its refresh token and its access token.
        for w in winners {
            assert_eq!(
                introspect(&app, &rp, w.rt()).await,
                json!({"active": false}),
                "round {round}"
            );
            assert_eq!(refresh(&app, &rp, w.rt()).await.error(), Some("invalid_grant"));
            assert_eq!(
                introspect(&app, &rp, w.at()).await,
                json!({"active": false}),
                "round {round}"
            );
            assert_eq!(userinfo_status(&app, w.at()).await, StatusCode::UNAUTHORIZED);
            assert_eq!(
                app.state.provider.check_access_token(w.at()).await.unwrap_err().reason,
                "token.revoked"
            );
        }
    }
}
