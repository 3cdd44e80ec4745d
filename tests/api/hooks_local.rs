//! Hooks at local sign-in (issue 10): a migration hook served by the test
//! receiver with a legacy user list moves a legacy user in at the first
//! sign-in (the second does not call it), refuses wrong credentials, and a
//! failing hook leaves no user behind and shows a clear page; a failing
//! post-confirmation hook leaves the account unconfirmed. A real aiosmtpd
//! receives the codes; the scripted browser drives the pages.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Page};
use crate::support::hooks::{Behavior, HookServer};
use crate::support::local::{assert_reason, link, pkce, Pkce};
use crate::support::smtp::SmtpServer;
use portcullis::clock::SystemClock;
use portcullis::ids::{ConnectionId, TenantId};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

const TENANT: &str = "legacy-co";
const CONN: &str = "pw";
const CLIENT: &str = "legacy-app";
const REDIRECT: &str = "http://127.0.0.1:9/cb";
const LEGACY_PASSWORD: &str = "Old-System-Passw0rd";
const NEW_PASSWORD: &str = "Tangerine-Orbit-42";

async fn gateway(smtp: &SmtpServer) -> TestApp {
    spawn_app(AppOptions {
        configure: Some(settings(smtp)),
        ..AppOptions::default()
    })
    .await
}

/// The settings of [`gateway`]: mail through `smtp`, cheap hashes, quick retries.
fn settings(smtp: &SmtpServer) -> crate::support::app::Configure {
    let url = smtp.url();
    Arc::new(move |s| {
        s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
        s.mail.from = Some("Sign-in <signin@legacy.example>".into());
        s.local.argon2_memory_kib = 8192;
        s.local.argon2_iterations = 1;
        s.hooks.retry_backoff_ms = 10;
    })
}

/// Two replicas of [`gateway`] over one real Redis (one key prefix).
async fn replicas(smtp: &SmtpServer) -> (TestApp, TestApp) {
    let prefix = crate::support::redis::prefix();
    let spawn = || {
        spawn_app(AppOptions {
            redis_url: Some(crate::support::redis::url()),
            redis_prefix: Some(prefix.clone()),
            configure: Some(settings(smtp)),
            ..AppOptions::default()
        })
    };
    (spawn().await, spawn().await)
}

/// The tenant, its local connection, a public app, and the hook `kind`
/// pointing at the receiver's `name` path (the receiver learns the secret).
async fn setup(app: &TestApp, hooks: &HookServer, kind: &str, name: &str) {
    app.create_tenant(TENANT, "Legacy Co", &["legacy.example"]).await;
    app.admin_create(
        &format!("/admin/v1/tenants/{TENANT}/connections"),
        json!({"id": CONN, "kind": "local"}),
    )
    .await;
    let redirect = Url::parse(REDIRECT).unwrap();
    app.create_client(CLIENT, "Legacy app", &[&redirect], true).await;
    let (status, answer) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/{TENANT}/hooks/{kind}"),
            Some(json!({"url": hooks.url(name), "timeout_ms": 500})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    hooks.set_secret(answer["secret"].as_str().unwrap());
}

/// Starts a sign-in at the app: the local sign-in page.
async fn start(app: &TestApp, browser: &mut Browser, p: &Pkce) -> Page {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid email profile")
        .append_pair("state", "st")
        .append_pair("code_challenge", &p.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("tenant", TENANT);
    let page = browser.get(&url).await;
    assert_eq!(
        page.url.path(),
        format!("/local/{TENANT}/{CONN}/sign-in"),
        "{}",
        page.body
    );
    page
}

/// Signs in with `email`/`password` from a fresh sign-in: the app's code
/// and the ID token's claims, or the page that refused.
async fn sign_in(app: &TestApp, email: &str, password: &str) -> Result<Value, Page> {
    let p = pkce();
    let mut browser = Browser::new();
    let page = start(app, &mut browser, &p).await;
    let mut form = page.form(None);
    form.set("email", email);
    form.set("password", password);
    let nav = browser
        .submit_until(&page, &form, &|u: &Url| u.as_str().starts_with(REDIRECT))
        .await;
    let back = match nav {
        crate::support::browser::Nav::Stopped(u) => u,
        crate::support::browser::Nav::Page(p) => return Err(p),
    };
    let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let resp = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", CLIENT),
            ("code_verifier", p.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    Ok(app
        .state
        .provider
        .keys
        .verify(tokens["id_token"].as_str().unwrap(), "JWT", &app.state.provider.iss())
        .await
        .unwrap())
}

async fn account(app: &TestApp, email: &str) -> Option<portcullis::local::LocalUser> {
    app.state
        .accounts
        .get(
            &TenantId::parse(TENANT).unwrap(),
            &ConnectionId::parse(CONN).unwrap(),
            email,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn user_migration_moves_a_legacy_user_in_at_the_first_sign_in_only() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks, "user_migration", "migrate").await;
    hooks.behave("migrate", Behavior::Legacy);
    hooks.add_legacy_user(
        "ada@legacy.example",
        LEGACY_PASSWORD,
        json!({"given_name": "Ada", "family_name": "Lovelace"}),
    );
    hooks.add_legacy_user("bob@legacy.example", LEGACY_PASSWORD, json!({}));

    // First sign-in: unknown locally, vouched by the legacy base.
    assert!(account(&app, "ada@legacy.example").await.is_none());
    let claims = sign_in(&app, "Ada@Legacy.example", LEGACY_PASSWORD).await.unwrap();
    assert_eq!(claims["email"], "ada@legacy.example");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["name"], "Ada Lovelace");
    let calls = hooks.calls_to("migrate");
    assert_eq!(calls.len(), 1);
    assert!(calls[0].signed);
    assert_eq!(calls[0].kind.as_deref(), Some("user_migration"));
    assert_eq!(calls[0].body["email"], "ada@legacy.example");
    assert_eq!(calls[0].body["password"], LEGACY_PASSWORD);
    assert_eq!(calls[0].body["tenant"], TENANT);
    // The account exists, confirmed, with the password re-hashed (argon2id).
    let ada = account(&app, "ada@legacy.example").await.unwrap();
    assert!(ada.migrated);
    assert_eq!(ada.status, portcullis::local::AccountStatus::Confirmed);
    assert!(ada.password_hash.starts_with("$argon2id$"), "{}", ada.password_hash);
    assert!(!ada.password_hash.contains(LEGACY_PASSWORD));

    // Second sign-in: the local account answers; the hook is not called.
    let again = sign_in(&app, "ada@legacy.example", LEGACY_PASSWORD).await.unwrap();
    assert_eq!(again["sub"], claims["sub"], "the same user");
    assert_eq!(hooks.calls_to("migrate").len(), 1, "not called again");
    // A wrong password for the migrated account is refused locally.
    let page = sign_in(&app, "ada@legacy.example", "Wrong-Passw0rd-1")
        .await
        .unwrap_err();
    assert_reason(&page, 401, "local.bad_credentials");
    assert_eq!(hooks.calls_to("migrate").len(), 1);

    // The legacy base refuses wrong credentials and unknown people: no account.
    for (email, password) in [
        ("bob@legacy.example", "Not-His-Passw0rd"),
        ("eve@legacy.example", LEGACY_PASSWORD),
    ] {
        let page = sign_in(&app, email, password).await.unwrap_err();
        assert_reason(&page, 401, "local.bad_credentials");
        assert!(account(&app, email).await.is_none(), "{email}");
    }
    assert_eq!(hooks.calls_to("migrate").len(), 3);
}

/// Someone signs a legacy user's address up first, with their own password,
/// and never confirms it: the unconfirmed account does not keep the legacy
/// user from migrating. Their legacy password asks the hook, the account
/// the hook vouches for replaces the unconfirmed one, and the sign-up's
/// password never signs in.
#[tokio::test]
async fn an_unconfirmed_sign_up_of_a_legacy_address_does_not_block_its_migration() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks, "user_migration", "migrate").await;
    hooks.behave("migrate", Behavior::Legacy);
    let email = "ada@legacy.example";
    hooks.add_legacy_user(email, LEGACY_PASSWORD, json!({"given_name": "Ada"}));
    let squatters = "Squatters-Own-Pass-1";
    let p = pkce();
    let mut squatter = Browser::new();
    let page = start(&app, &mut squatter, &p).await;
    let form = squatter.get(&link(&page, "Create account")).await;
    squatter
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", email),
                ("password", squatters),
                ("password_confirm", squatters),
            ],
        )
        .await;
    smtp.wait_for(email).await;
    let squat = account(&app, email).await.unwrap();
    assert_eq!(squat.status, portcullis::local::AccountStatus::Unconfirmed);

    let claims = sign_in(&app, email, LEGACY_PASSWORD).await.unwrap();
    assert_eq!(claims["email"], email);
    assert_eq!(claims["given_name"], "Ada");
    let ada = account(&app, email).await.unwrap();
    assert!(ada.migrated);
    assert_eq!(ada.status, portcullis::local::AccountStatus::Confirmed);
    assert_ne!(ada.subject, squat.subject, "a new account, not the sign-up's");
    let refused = sign_in(&app, email, squatters).await.unwrap_err();
    assert_reason(&refused, 401, "local.bad_credentials");
}

#[tokio::test]
async fn a_failing_migration_hook_leaves_no_user_behind_and_shows_a_clear_page() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks, "user_migration", "migrate").await;
    hooks.add_legacy_user("cy@legacy.example", LEGACY_PASSWORD, json!({}));
    let email = "cy@legacy.example";
    for (behavior, status, reason, attempts) in [
        (Behavior::Status(500), 503, "hook.bad_status", 2),
        (Behavior::Slow(Duration::from_millis(1500)), 503, "hook.timeout", 2),
        (Behavior::Garbage("<html>oops</html>"), 502, "hook.bad_answer", 1),
        (
            Behavior::Answer(json!({"outcome": "migrate", "profile": {"email_verified": true}})),
            502,
            "hook.bad_answer",
            1,
        ),
    ] {
        hooks.behave("migrate", behavior.clone());
        let before = hooks.calls_to("migrate").len();
        let page = sign_in(&app, email, LEGACY_PASSWORD).await.unwrap_err();
        assert_reason(&page, status, reason);
        assert!(
            page.body.contains("did not answer") && page.body.contains("nothing was changed"),
            "a clear page: {}",
            page.body
        );
        assert!(account(&app, email).await.is_none(), "no user behind: {behavior:?}");
        assert_eq!(hooks.calls_to("migrate").len() - before, attempts, "{behavior:?}");
    }
    // Once the hook answers again, the same person moves in.
    hooks.behave("migrate", Behavior::Legacy);
    sign_in(&app, email, LEGACY_PASSWORD).await.unwrap();
    assert!(account(&app, email).await.unwrap().migrated);
}

/// A legacy user whose name is longer than an account may keep is not
/// moved in (`local.name_too_long`): the hook's answer is bounded as a
/// sign-up's form is, and nothing is stored.
#[tokio::test]
async fn a_migrated_user_with_an_overlong_name_is_refused_and_leaves_no_account() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks, "user_migration", "migrate").await;
    hooks.behave("migrate", Behavior::Legacy);
    let email = "max@legacy.example";
    hooks.add_legacy_user(email, LEGACY_PASSWORD, json!({"given_name": "m".repeat(201)}));
    let page = sign_in(&app, email, LEGACY_PASSWORD).await.unwrap_err();
    assert_reason(&page, 400, "local.name_too_long");
    assert!(account(&app, email).await.is_none(), "no account is stored");
    assert_eq!(hooks.calls_to("migrate").len(), 1);
}

/// A confirmed account made without the hook (as an admin's import would):
/// the hook has never been asked about it.
async fn known_account(app: &TestApp, email: &str, password: &str) {
    app.state
        .accounts
        .create_migrated(
            &TenantId::parse(TENANT).unwrap(),
            &ConnectionId::parse(CONN).unwrap(),
            email,
            &portcullis::secret::Secret::new(password.to_owned()),
            portcullis::local::Profile::default(),
        )
        .await
        .unwrap();
}

/// While the migration hook is down, an address with an account fails a
/// wrong password as an unknown address does (the same status, reason and
/// page, without asking the hook), and each such failure counts toward the
/// lockout for both: neither the page nor the lockout tells which
/// addresses have accounts. The right password still signs in.
#[tokio::test]
async fn a_known_address_fails_as_an_unknown_one_while_the_migration_hook_is_down() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks, "user_migration", "migrate").await;
    let known = "kay@legacy.example";
    let unknown = "nobody@legacy.example";
    known_account(&app, known, NEW_PASSWORD).await;
    hooks.behave("migrate", Behavior::Status(500));

    let asked = sign_in(&app, unknown, NEW_PASSWORD).await.unwrap_err();
    assert_reason(&asked, 503, "hook.bad_status");
    let calls = hooks.calls_to("migrate").len();
    let replayed = sign_in(&app, known, "Wrong-Passw0rd-1").await.unwrap_err();
    assert_reason(&replayed, 503, "hook.bad_status");
    assert!(
        replayed.body.contains("did not answer") && replayed.body.contains("nothing was changed"),
        "the outage's page: {}",
        replayed.body
    );
    assert_eq!(
        hooks.calls_to("migrate").len(),
        calls,
        "the hook is not asked about a known address"
    );
    sign_in(&app, known, NEW_PASSWORD).await.unwrap();

    // Both addresses lock after the threshold (5) of failures: the unknown
    // one's hook failures count as the known one's wrong passwords do. The
    // circuit opens after the fifth failed call, and from then on both fail
    // as the open circuit does.
    for attempt in 2..=5 {
        let page = sign_in(&app, unknown, NEW_PASSWORD).await.unwrap_err();
        assert_eq!(
            page.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {}",
            page.body
        );
    }
    assert_reason(
        &sign_in(&app, unknown, NEW_PASSWORD).await.unwrap_err(),
        429,
        "local.locked",
    );
    for _ in 1..=5 {
        let page = sign_in(&app, known, "Wrong-Passw0rd-1").await.unwrap_err();
        assert_reason(&page, 503, "hook.circuit_open");
    }
    assert_reason(
        &sign_in(&app, known, "Wrong-Passw0rd-1").await.unwrap_err(),
        429,
        "local.locked",
    );
}

/// The tenant with a user-migration hook at `hooks` that takes a second to
/// answer (a legacy system), and a known account: the hook's time and the
/// account's address.
async fn slow_migration_hook(app: &TestApp, hooks: &HookServer) -> (Duration, &'static str) {
    setup(app, hooks, "user_migration", "migrate").await;
    let (status, answer) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/{TENANT}/hooks/user_migration"),
            Some(json!({"url": hooks.url("migrate"), "timeout_ms": 3000})),
        )
        .await;
    assert!(status.is_success(), "{answer}");
    if let Some(secret) = answer["secret"].as_str() {
        hooks.set_secret(secret);
    }
    let hook_takes = Duration::from_millis(1000);
    hooks.behave("migrate", Behavior::SlowLegacy(hook_takes));
    let known = "kay@legacy.example";
    known_account(app, known, NEW_PASSWORD).await;
    (hook_takes, known)
}

/// How long a sign-in of `email` with a wrong password takes until its
/// refusal (`local.bad_credentials`) is shown.
async fn wrong_password_takes(app: &TestApp, email: &str) -> Duration {
    let p = pkce();
    let mut browser = Browser::new();
    let page = start(app, &mut browser, &p).await;
    let mut form = page.form(None);
    form.set("email", email);
    form.set("password", "Wrong-Passw0rd-1");
    let started = std::time::Instant::now();
    let nav = browser
        .submit_until(&page, &form, &|u: &Url| u.as_str().starts_with(REDIRECT))
        .await;
    let took = started.elapsed();
    let crate::support::browser::Nav::Page(refused) = nav else {
        panic!("{email} signed in with a wrong password");
    };
    assert_reason(&refused, 401, "local.bad_credentials");
    took
}

/// An unknown address's failed sign-in waits for the migration hook's
/// answer; a known address's wrong password waits as long (one of the
/// hook's recent calls, replayed), without asking the hook.
#[tokio::test]
async fn a_known_addresss_wrong_password_waits_as_long_as_asking_the_migration_hook() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    let (hook_takes, known) = slow_migration_hook(&app, &hooks).await;

    let unknown_took = wrong_password_takes(&app, "nobody@legacy.example").await;
    assert!(
        unknown_took >= hook_takes,
        "the unknown address waited for the hook: {unknown_took:?}"
    );
    let calls = hooks.calls_to("migrate").len();
    let known_took = wrong_password_takes(&app, known).await;
    assert!(
        known_took >= hook_takes,
        "the known address waited as long: {known_took:?} (the hook takes {hook_takes:?})"
    );
    assert_eq!(
        hooks.calls_to("migrate").len(),
        calls,
        "the hook is not asked about a known address"
    );
}

/// A replica that never called the migration hook itself (just started,
/// behind a load balancer) replays the calls other replicas made: a known
/// address's wrong password waits as long there too, instead of answering
/// at once while an unknown one waits for the hook.
#[tokio::test]
async fn a_replica_that_never_asked_the_migration_hook_replays_the_calls_of_the_others() {
    let smtp = SmtpServer::start();
    let (a, b) = replicas(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    let (hook_takes, known) = slow_migration_hook(&a, &hooks).await;

    // Only replica a asks the hook.
    let unknown_took = wrong_password_takes(&a, "nobody@legacy.example").await;
    assert!(unknown_took >= hook_takes, "the hook was asked: {unknown_took:?}");
    let calls = hooks.calls_to("migrate").len();
    let known_took = wrong_password_takes(&b, known).await;
    assert!(
        known_took >= hook_takes,
        "replica b, which never called the hook, waited as long: {known_took:?} (the hook takes {hook_takes:?})"
    );
    assert_eq!(
        hooks.calls_to("migrate").len(),
        calls,
        "the hook is not asked about a known address"
    );
}

#[tokio::test]
async fn a_failing_post_confirmation_hook_leaves_the_account_unconfirmed() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks, "post_confirmation", "confirmed").await;
    hooks.behave("confirmed", Behavior::Status(500));
    let email = "dee@legacy.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in_page = start(&app, &mut browser, &p).await;
    let form = browser.get(&link(&sign_in_page, "Create account")).await;
    let confirm = browser
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", email),
                ("given_name", "Dee"),
                ("family_name", "Doe"),
                ("password", NEW_PASSWORD),
                ("password_confirm", NEW_PASSWORD),
            ],
        )
        .await;
    let code = smtp.wait_for(email).await.code();
    let page = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &code)])
        .await;
    assert_reason(&page, 503, "hook.bad_status");
    assert!(page.body.contains("not confirmed yet"), "{}", page.body);
    assert_eq!(hooks.calls_to("confirmed").len(), 1, "a notification is never repeated");
    assert!(hooks.calls_to("confirmed")[0].signed);
    assert_eq!(hooks.calls_to("confirmed")[0].body["email"], email);
    assert_eq!(
        account(&app, email).await.unwrap().status,
        portcullis::local::AccountStatus::Unconfirmed,
        "no half state"
    );
    let refused = sign_in(&app, email, NEW_PASSWORD).await.unwrap_err();
    assert_reason(&refused, 401, "local.bad_credentials");

    // The hook answers again: a new code confirms the account.
    hooks.behave("confirmed", Behavior::Answer(json!({})));
    let resend = browser.get(&link(&page, "Send a new code")).await;
    let confirm = browser.fill_and_submit(&resend, None, &[("email", email)]).await;
    let fresh = smtp.wait_for_after(email, 1).await.code();
    let done = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &fresh)])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(hooks.calls_to("confirmed").len(), 2);
    assert_eq!(
        account(&app, email).await.unwrap().status,
        portcullis::local::AccountStatus::Confirmed
    );
    let claims = sign_in(&app, email, NEW_PASSWORD).await.unwrap();
    assert_eq!(claims["email"], email);
}
