//! The `custom_challenge` hook at local sign-in (issue 10): after the right
//! password, the tenant's hook (served by the test receiver with a scripted
//! "what is 2+3" challenge) defines, creates and verifies a challenge shown
//! on a page of ours. A right answer signs in; a wrong one then a right one
//! takes two rounds; `fail_authentication` is refused with its reason code;
//! the private parameters never reach the page; a failing or slow hook
//! fails closed and issues no code; the challenge's handle is single use and
//! bound to the browser; wrong answers count against the account lockout.
//! Passwordless (`"sign_in":"custom_challenge"`): the email only, then the
//! hook alone; an unknown email gets a decoy challenge that looks the same
//! and never signs in; without a hook the sign-in is refused; a posted
//! password is ignored.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{all_at_once, Browser, Nav, Page, Pending};
use crate::support::hooks::{Behavior, HookServer, PRIVATE_MARKER};
use crate::support::local::{assert_reason, pkce, Pkce};
use portcullis::clock::SystemClock;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::secret::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

const TENANT: &str = "quiz-co";
const CONN: &str = "pw";
const CLIENT: &str = "quiz-app";
const REDIRECT: &str = "http://127.0.0.1:9/cb";
const EMAIL: &str = "ada@quiz.example";
const PASSWORD: &str = "Tangerine-Orbit-42";

async fn gateway(lockout_threshold: u32) -> TestApp {
    spawn_app(AppOptions {
        configure: Some(Arc::new(move |s| {
            s.local.argon2_memory_kib = 8192;
            s.local.argon2_iterations = 1;
            s.local.lockout_threshold = lockout_threshold;
            s.hooks.retry_backoff_ms = 10;
            // The failure cases below must each reach the hook.
            s.hooks.breaker_failures = 1000;
        })),
        ..AppOptions::default()
    })
    .await
}

/// The tenant, its local connection with one confirmed account, a public
/// app, and the `custom_challenge` hook at the receiver's `challenge` path.
async fn setup(app: &TestApp, hooks: &HookServer) {
    app.create_tenant(TENANT, "Quiz Co", &["quiz.example"]).await;
    app.admin_create(
        &format!("/admin/v1/tenants/{TENANT}/connections"),
        json!({"id": CONN, "kind": "local"}),
    )
    .await;
    let redirect = Url::parse(REDIRECT).unwrap();
    app.create_client(CLIENT, "Quiz app", &[&redirect], true).await;
    app.state
        .accounts
        .admin_create(
            &TenantId::parse(TENANT).unwrap(),
            &ConnectionId::parse(CONN).unwrap(),
            &portcullis::local::LocalConfig::default(),
            EMAIL,
            Some(&Secret::new(PASSWORD)),
            portcullis::local::Profile::default(),
        )
        .await
        .unwrap();
    let (status, answer) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/{TENANT}/hooks/custom_challenge"),
            Some(json!({"url": hooks.url("challenge"), "timeout_ms": 500})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    hooks.set_secret(answer["secret"].as_str().unwrap());
    hooks.behave("challenge", Behavior::Arithmetic);
}

/// Starts a sign-in at the app and sends the password: the page that
/// follows (the challenge, or a refusal).
async fn password(app: &TestApp, browser: &mut Browser, p: &Pkce) -> Page {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid email")
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
    let mut form = page.form(None);
    form.set("email", EMAIL);
    form.set("password", PASSWORD);
    browser.submit(&page, &form).await
}

/// Answers the challenge on `page` (its form as shown, `handle` replaced
/// when given): the app's ID token claims, or the page that followed.
async fn answer(
    app: &TestApp,
    browser: &mut Browser,
    p: &Pkce,
    page: &Page,
    text: &str,
    handle: Option<&str>,
) -> Result<Value, Page> {
    let mut form = page.form(None);
    form.set("answer", text);
    if let Some(h) = handle {
        form.set("handle", h);
    }
    let back = match browser
        .submit_until(page, &form, &|u: &Url| u.as_str().starts_with(REDIRECT))
        .await
    {
        Nav::Stopped(u) => u,
        Nav::Page(p) => return Err(p),
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

/// A challenge page: the question as text, no script, a CSRF token, a
/// handle, an answer field, and none of the private parameters.
fn assert_challenge_page(page: &Page) -> String {
    let path = page.url.path();
    assert!(
        path == format!("/local/{TENANT}/{CONN}/sign-in") || path == format!("/local/{TENANT}/{CONN}/challenge"),
        "{path}"
    );
    assert!(page.body.contains("What is 2+3?"), "{}", page.body);
    assert!(page.body.contains("A number between 1 and 9."), "{}", page.body);
    assert!(
        page.body.contains("Ask &#60;b&#62;us&#60;/b&#62;"),
        "escaped: {}",
        page.body
    );
    assert!(!page.body.contains("<b>us"));
    assert!(!page.body.contains(PRIVATE_MARKER), "private parameter on the page");
    assert!(!page.body.contains("\"5\""), "the expected answer on the page");
    assert!(!page.body.to_ascii_lowercase().contains("<script"));
    assert!(page.body.contains("<label for=\"answer\">"), "{}", page.body);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let form = page.form(None);
    assert!(form.action.ends_with(&format!("/local/{TENANT}/{CONN}/challenge")));
    assert!(!form.field("csrf").unwrap_or_default().is_empty());
    let handle = form.field("handle").unwrap().to_owned();
    assert!(handle.len() >= 40, "{handle}");
    handle
}

/// The define calls' `session` so far.
fn define_sessions(hooks: &HookServer) -> Vec<Value> {
    hooks
        .calls_to("challenge")
        .into_iter()
        .filter(|c| c.body["step"] == "define")
        .map(|c| c.body["session"].clone())
        .collect()
}

#[tokio::test]
async fn a_right_answer_signs_in_and_the_private_parameters_stay_on_the_server() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_challenge_page(&page);
    // Only define and create so far: nothing issued yet.
    let steps: Vec<String> = hooks
        .calls_to("challenge")
        .iter()
        .map(|c| c.body["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steps, ["define", "create"]);
    assert_eq!(hooks.calls_to("challenge")[0].body["email"], EMAIL);
    assert_eq!(hooks.calls_to("challenge")[0].body["session"], json!([]));

    let claims = answer(&app, &mut browser, &p, &page, " 5 ", None).await.unwrap();
    assert_eq!(claims["email"], EMAIL);
    let calls = hooks.calls_to("challenge");
    assert!(calls
        .iter()
        .all(|c| c.signed && c.kind.as_deref() == Some("custom_challenge")));
    let verify = calls.iter().find(|c| c.body["step"] == "verify").unwrap();
    assert_eq!(verify.body["private_challenge_parameters"]["marker"], PRIVATE_MARKER);
    assert_eq!(verify.body["challenge_answer"], " 5 ");
    assert_eq!(
        define_sessions(&hooks),
        [
            json!([]),
            json!([{"challenge_name": "arithmetic", "challenge_result": true}])
        ]
    );
}

#[tokio::test]
async fn a_wrong_answer_then_a_right_one_takes_two_rounds() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    let p = pkce();
    let mut browser = Browser::new();
    let first = password(&app, &mut browser, &p).await;
    let first_handle = assert_challenge_page(&first);
    let second = answer(&app, &mut browser, &p, &first, "4", None).await.unwrap_err();
    assert_reason(&second, 400, "challenge.wrong_answer");
    let second_handle = assert_challenge_page(&second);
    assert_ne!(first_handle, second_handle, "a fresh handle per round");
    let claims = answer(&app, &mut browser, &p, &second, "5", None).await.unwrap();
    assert_eq!(claims["email"], EMAIL);
    assert_eq!(
        define_sessions(&hooks).last().unwrap(),
        &json!([
            {"challenge_name": "arithmetic", "challenge_result": false},
            {"challenge_name": "arithmetic", "challenge_result": true},
        ])
    );
}

#[tokio::test]
async fn fail_authentication_is_refused_with_its_reason_code() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    hooks.behave("challenge", Behavior::Answer(json!({"fail_authentication": true})));
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    assert_reason(&page, 403, "challenge.failed");
    assert!(!page.body.contains("/challenge\""), "no challenge form: {}", page.body);
    assert_eq!(hooks.calls_to("challenge").len(), 1, "define only");
    assert!(
        browser.trail().find(REDIRECT).is_none(),
        "nothing issued: {}",
        browser.trail()
    );
}

#[tokio::test]
async fn a_failing_or_slow_hook_fails_closed_and_issues_no_code() {
    let app = gateway(100).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    // At the first define.
    for (behavior, status, reason) in [
        (Behavior::Status(500), 503, "hook.bad_status"),
        (Behavior::Slow(Duration::from_millis(1500)), 503, "hook.timeout"),
        (Behavior::Garbage("<html>oops</html>"), 502, "hook.bad_answer"),
        (
            Behavior::Answer(json!({"issue_tokens": true, "challenge_name": "x"})),
            502,
            "hook.bad_answer",
        ),
    ] {
        hooks.behave("challenge", behavior.clone());
        let p = pkce();
        let mut browser = Browser::new();
        let page = password(&app, &mut browser, &p).await;
        assert_reason(&page, status, reason);
        assert!(
            page.body.contains("you are not signed in"),
            "a clear page: {}",
            page.body
        );
        assert!(!browser.trail().contains("ticket="), "no ticket: {behavior:?}");
        assert!(!browser.trail().contains(REDIRECT), "no code: {behavior:?}");
    }
    // At verify, after the page was shown: the right answer does not get through.
    for (behavior, status, reason) in [
        (Behavior::Status(500), 503, "hook.bad_status"),
        (Behavior::Slow(Duration::from_millis(1500)), 503, "hook.timeout"),
    ] {
        hooks.behave("challenge", Behavior::Arithmetic);
        let p = pkce();
        let mut browser = Browser::new();
        let page = password(&app, &mut browser, &p).await;
        let handle = assert_challenge_page(&page);
        hooks.behave("challenge", behavior.clone());
        let refused = answer(&app, &mut browser, &p, &page, "5", None).await.unwrap_err();
        assert_reason(&refused, status, reason);
        assert!(!browser.trail().contains(REDIRECT), "no code: {behavior:?}");
        // The handle is spent: the hook answering again does not revive it.
        hooks.behave("challenge", Behavior::Arithmetic);
        let again = password(&app, &mut browser, &p).await;
        assert_challenge_page(&again);
        let replay = answer(&app, &mut browser, &p, &again, "5", Some(&handle))
            .await
            .unwrap_err();
        assert_reason(&replay, 400, "challenge.unknown_handle");
    }
    // The hook removed between the page and the answer: refused, not waved through.
    hooks.behave("challenge", Behavior::Arithmetic);
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    assert_challenge_page(&page);
    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/{TENANT}/hooks/custom_challenge"),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let refused = answer(&app, &mut browser, &p, &page, "5", None).await.unwrap_err();
    assert_reason(&refused, 403, "challenge.failed");
}

#[tokio::test]
async fn the_handle_is_single_use_and_bound_to_the_browser() {
    let app = gateway(100).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    // Another browser presenting this browser's handle (with its own valid
    // CSRF token) is refused, and the handle is spent.
    let (pa, pb) = (pkce(), pkce());
    let (mut a, mut b) = (Browser::new(), Browser::new());
    let page_a = password(&app, &mut a, &pa).await;
    let handle_a = assert_challenge_page(&page_a);
    let page_b = password(&app, &mut b, &pb).await;
    assert_challenge_page(&page_b);
    let stolen = answer(&app, &mut b, &pb, &page_b, "5", Some(&handle_a))
        .await
        .unwrap_err();
    assert_reason(&stolen, 400, "challenge.browser_mismatch");
    let late = answer(&app, &mut a, &pa, &page_a, "5", None).await.unwrap_err();
    assert_reason(&late, 400, "challenge.unknown_handle");

    // A handle that signed in once does not work again.
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    let used = assert_challenge_page(&page);
    answer(&app, &mut browser, &p, &page, "5", None).await.unwrap();
    // (A fresh browser: this one has an SSO session now.)
    let mut browser = Browser::new();
    let again = password(&app, &mut browser, &p).await;
    assert_challenge_page(&again);
    let replay = answer(&app, &mut browser, &p, &again, "5", Some(&used))
        .await
        .unwrap_err();
    assert_reason(&replay, 400, "challenge.unknown_handle");
    // Without the form's CSRF token the answer is not even looked at.
    let mut form = again.form(None);
    form.set("csrf", "forged");
    let forged = browser.submit(&again, &form).await;
    assert_reason(&forged, 403, "local.csrf_mismatch");
}

#[tokio::test]
async fn wrong_answers_count_against_the_lockout() {
    let app = gateway(2).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    let second = answer(&app, &mut browser, &p, &page, "7", None).await.unwrap_err();
    assert_reason(&second, 400, "challenge.wrong_answer");
    let locked = answer(&app, &mut browser, &p, &second, "8", None).await.unwrap_err();
    assert_reason(&locked, 429, "local.locked");
    // The right password does not reset the count: the account stays locked.
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    assert_reason(&page, 429, "local.locked");
}

/// Answers sent together are judged one at a time per account, as
/// passwords are: each answer (one sign-in each, its own challenge) read
/// the lockout when it arrived and counted its failure only after the
/// hook's verdict, so a burst of twelve wrong answers was judged twelve
/// times against a lockout of three. Now the burst gets at most the
/// lockout's worth of verdicts; the rest are refused (`local.busy` or
/// `local.locked`, 429) before the hook is asked.
#[tokio::test]
async fn answers_sent_together_are_judged_one_at_a_time() {
    let app = gateway(3).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    // Each verdict takes long enough for the whole burst to arrive.
    hooks.behave("challenge", Behavior::SlowArithmetic(Duration::from_millis(300)));
    // Half the challenges one address may be made in an hour, so that the
    // next rounds of the wrong answers judged are made too.
    let burst = portcullis::local::challenge::CHALLENGES_PER_HOUR as usize / 2;
    let mut sign_ins = Vec::new();
    for _ in 0..burst {
        let p = pkce();
        let mut browser = Browser::new();
        let page = password(&app, &mut browser, &p).await;
        assert_challenge_page(&page);
        sign_ins.push((browser, p, page));
    }
    let verdicts_before = hooks
        .calls_to("challenge")
        .iter()
        .filter(|c| c.body["step"] == "verify")
        .count();
    assert_eq!(verdicts_before, 0);
    // Every wrong answer at once.
    let app_ref = &app;
    let pages = all_at_once(
        sign_ins
            .iter_mut()
            .map(|(browser, p, page)| {
                Box::pin(async move { answer(app_ref, browser, p, page, "7", None).await.unwrap_err() }) as Pending<'_>
            })
            .collect(),
    )
    .await;
    let verdicts = hooks
        .calls_to("challenge")
        .iter()
        .filter(|c| c.body["step"] == "verify")
        .count();
    let reasons: Vec<String> = pages
        .iter()
        .map(|p| {
            ["challenge.wrong_answer", "local.busy", "local.locked"]
                .into_iter()
                .find(|r| p.body.contains(&format!("<code>{r}</code>")))
                .unwrap_or_else(|| panic!("{} {}", p.status, p.body))
                .to_owned()
        })
        .collect();
    assert!(
        (1..=3).contains(&verdicts),
        "{verdicts} answers of a burst of {burst} were judged by the hook against a lockout of 3: {reasons:?}"
    );
    let refused = pages
        .iter()
        .filter(|p| p.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        refused + reasons.iter().filter(|r| *r == "challenge.wrong_answer").count(),
        burst,
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "local.busy"), "{reasons:?}");
}

#[tokio::test]
async fn a_sign_in_asks_at_most_five_challenges() {
    let app = gateway(100).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    let p = pkce();
    let mut browser = Browser::new();
    let mut page = password(&app, &mut browser, &p).await;
    for _ in 0..4 {
        page = answer(&app, &mut browser, &p, &page, "6", None).await.unwrap_err();
        assert_reason(&page, 400, "challenge.wrong_answer");
    }
    let last = answer(&app, &mut browser, &p, &page, "6", None).await.unwrap_err();
    assert_reason(&last, 403, "challenge.too_many_rounds");
    assert_eq!(define_sessions(&hooks).len(), 5);
}

// ---- Passwordless (`"sign_in":"custom_challenge"`): the hook alone ----

/// Turns the connection passwordless through the admin merge patch.
async fn make_passwordless(app: &TestApp) {
    let (status, answer) = app
        .admin(
            Method::PATCH,
            &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}"),
            Some(json!({"sign_in": "custom_challenge"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["sign_in"], "custom_challenge", "{answer}");
}

/// Starts a sign-in at the app and sends `email` on the passwordless page
/// (and `password`, when given, as an extra form field): the page that follows.
async fn email_only(app: &TestApp, browser: &mut Browser, p: &Pkce, email: &str, password: Option<&str>) -> Page {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid email")
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
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("type=\"password\""),
        "no password field: {}",
        page.body
    );
    let mut form = page.form(None);
    assert!(form.field("password").is_none(), "{form:?}");
    form.set("email", email);
    if let Some(pw) = password {
        form.set("password", pw);
    }
    browser.submit(&page, &form).await
}

/// The page with its per-request values (CSRF token, handle, login id)
/// blanked, to compare two pages.
fn normalised(page: &Page) -> String {
    let mut body = page.body.clone();
    for (_, v) in page.form(None).fields {
        if v.len() >= 16 {
            body = body.replace(&v, "<per-request>");
        }
    }
    body
}

#[tokio::test]
async fn passwordless_sign_in_asks_the_hook_alone_and_never_a_password() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    let p = pkce();
    let mut browser = Browser::new();
    let page = email_only(&app, &mut browser, &p, EMAIL, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_challenge_page(&page);
    let calls = hooks.calls_to("challenge");
    let steps: Vec<&str> = calls.iter().map(|c| c.body["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["define", "create"]);
    assert_eq!(calls[0].body["email"], EMAIL);
    assert_eq!(calls[0].body["session"], json!([]));

    let claims = answer(&app, &mut browser, &p, &page, "5", None).await.unwrap();
    assert_eq!(claims["email"], EMAIL);
    // RFC 8176: no password was used, so no `pwd`.
    assert!(
        !claims["amr"].as_array().is_some_and(|a| a.iter().any(|m| m == "pwd")),
        "{claims}"
    );
    assert!(
        !browser.trail().contains("password="),
        "no password ever posted: {}",
        browser.trail()
    );
    assert_eq!(
        define_sessions(&hooks),
        [
            json!([]),
            json!([{"challenge_name": "arithmetic", "challenge_result": true}])
        ]
    );
}

#[tokio::test]
async fn passwordless_a_wrong_answer_then_a_right_one_signs_in() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    let p = pkce();
    let mut browser = Browser::new();
    let first = email_only(&app, &mut browser, &p, EMAIL, None).await;
    assert_challenge_page(&first);
    let second = answer(&app, &mut browser, &p, &first, "4", None).await.unwrap_err();
    assert_reason(&second, 400, "challenge.wrong_answer");
    assert_challenge_page(&second);
    let claims = answer(&app, &mut browser, &p, &second, "5", None).await.unwrap();
    assert_eq!(claims["email"], EMAIL);
    assert_eq!(
        define_sessions(&hooks).last().unwrap(),
        &json!([
            {"challenge_name": "arithmetic", "challenge_result": false},
            {"challenge_name": "arithmetic", "challenge_result": true},
        ])
    );
}

#[tokio::test]
async fn passwordless_unknown_email_looks_the_same_and_never_signs_in() {
    let app = gateway(100).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    let unknown = "nobody@quiz.example";

    let p = pkce();
    let mut known_browser = Browser::new();
    let known = email_only(&app, &mut known_browser, &p, EMAIL, None).await;
    let mut browser = Browser::new();
    let decoy = email_only(&app, &mut browser, &p, unknown, None).await;
    assert_eq!(decoy.status, known.status);
    assert_challenge_page(&decoy);
    assert_eq!(normalised(&decoy), normalised(&known), "the same page");
    // The hook was asked for the unknown email as for a known one.
    let emails: Vec<String> = hooks
        .calls_to("challenge")
        .iter()
        .map(|c| c.body["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(emails, [EMAIL, EMAIL, unknown, unknown]);

    // Even the answer the hook judges right never signs in: it reads as a
    // wrong answer, the same page and status as a known email's wrong one.
    let known_wrong = answer(&app, &mut known_browser, &p, &known, "4", None)
        .await
        .unwrap_err();
    let decoy_right = answer(&app, &mut browser, &p, &decoy, "5", None).await.unwrap_err();
    assert_reason(&known_wrong, 400, "challenge.wrong_answer");
    assert_reason(&decoy_right, 400, "challenge.wrong_answer");
    assert_eq!(normalised(&decoy_right), normalised(&known_wrong), "the same page");
    let last = answer(&app, &mut browser, &p, &decoy_right, "5", None)
        .await
        .unwrap_err();
    assert_reason(&last, 400, "challenge.wrong_answer");
    assert!(
        browser.trail().find(REDIRECT).is_none(),
        "nothing issued: {}",
        browser.trail()
    );
}

#[tokio::test]
async fn passwordless_unknown_email_wrong_answers_count_against_the_lockout() {
    let app = gateway(2).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    for email in [EMAIL, "nobody@quiz.example"] {
        let p = pkce();
        let mut browser = Browser::new();
        let page = email_only(&app, &mut browser, &p, email, None).await;
        let second = answer(&app, &mut browser, &p, &page, "7", None).await.unwrap_err();
        assert_reason(&second, 400, "challenge.wrong_answer");
        let locked = answer(&app, &mut browser, &p, &second, "8", None).await.unwrap_err();
        assert_reason(&locked, 429, "local.locked");
    }
}

#[tokio::test]
async fn passwordless_without_a_hook_is_refused_with_its_reason_code() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    let (status, answer) = app
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/{TENANT}/hooks/custom_challenge"),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {answer}");
    for email in [EMAIL, "nobody@quiz.example"] {
        let p = pkce();
        let mut browser = Browser::new();
        let page = email_only(&app, &mut browser, &p, email, None).await;
        assert_reason(&page, 403, "local.challenge_not_configured");
        assert!(browser.trail().find(REDIRECT).is_none(), "{}", browser.trail());
    }
    assert!(hooks.calls_to("challenge").is_empty());
}

#[tokio::test]
async fn passwordless_ignores_a_posted_password() {
    let app = gateway(1).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    let p = pkce();
    let mut browser = Browser::new();
    // A wrong password is neither checked nor counted (threshold 1 would lock).
    let page = email_only(&app, &mut browser, &p, EMAIL, Some("wrong-password")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_challenge_page(&page);
    let claims = answer(&app, &mut browser, &p, &page, "5", None).await.unwrap();
    assert_eq!(claims["email"], EMAIL);
}

/// Where the tenant's sign-in asks the challenge hook, the password alone
/// does not change the password: the change form without a session is
/// refused before the password is looked at (it used to change it, signing
/// the owner out everywhere), the hook is not asked, and the password still
/// leads to the challenge.
#[tokio::test]
async fn a_password_alone_does_not_change_the_password_where_the_challenge_applies() {
    let app = gateway(5).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    let mut stranger = Browser::new();
    let page = stranger
        .get(&app.url(&format!("/local/{TENANT}/{CONN}/change-password")))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let mut form = page.form(None);
    form.set("email", EMAIL);
    form.set("current_password", PASSWORD);
    form.set("password", "Brand-New-Harbour-77");
    form.set("password_confirm", "Brand-New-Harbour-77");
    let refused = stranger.submit(&page, &form).await;
    assert_reason(&refused, 403, "local.change_needs_challenge");
    assert!(hooks.calls_to("challenge").is_empty(), "the hook was asked");
    // The old password still leads to the challenge.
    let mut owner = Browser::new();
    let challenge = password(&app, &mut owner, &pkce()).await;
    assert_challenge_page(&challenge);
}

/// The hook's `create` may send a code by mail or SMS, and anyone can start
/// a passwordless sign-in with someone else's address: at most
/// `CHALLENGES_PER_HOUR` challenges are made for one address, then the
/// sign-in is refused (`challenge.throttled`, 429 with `Retry-After`)
/// without asking the hook to create one. An unknown address is capped
/// the same way and its refusal looks the same; another address is not
/// affected.
#[tokio::test]
async fn challenges_made_for_one_address_are_capped_whether_or_not_it_has_an_account() {
    use portcullis::local::challenge::CHALLENGES_PER_HOUR;
    let app = gateway(100).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    make_passwordless(&app).await;
    let creates = |email: &str| {
        hooks
            .calls_to("challenge")
            .iter()
            .filter(|c| c.body["step"] == "create" && c.body["email"] == email)
            .count()
    };
    let mut refusals = Vec::new();
    for email in [EMAIL, "nobody@quiz.example"] {
        let p = pkce();
        for _ in 0..CHALLENGES_PER_HOUR {
            let page = email_only(&app, &mut Browser::new(), &p, email, None).await;
            assert_challenge_page(&page);
        }
        assert_eq!(creates(email), CHALLENGES_PER_HOUR as usize);
        let refused = email_only(&app, &mut Browser::new(), &p, email, None).await;
        assert_reason(&refused, 429, "challenge.throttled");
        let wait: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=3600).contains(&wait), "{wait}");
        assert_eq!(creates(email), CHALLENGES_PER_HOUR as usize, "no create once capped");
        refusals.push(normalised(&refused));
    }
    assert_eq!(refusals[0], refusals[1], "the same refusal, account or not");
    // Another address still gets its challenge.
    let page = email_only(&app, &mut Browser::new(), &pkce(), "grace@quiz.example", None).await;
    assert_challenge_page(&page);
}

/// A challenge asked after the old password does not finish a sign-in
/// once the password was changed or reset meanwhile: whoever knew the old
/// password and left the challenge page open is refused even with the
/// right answer (`challenge.account_changed`), and no code is issued.
#[tokio::test]
async fn a_challenge_begun_with_the_old_password_ends_when_the_password_changes() {
    let app = gateway(100).await;
    let hooks = HookServer::start(Arc::new(SystemClock)).await;
    setup(&app, &hooks).await;
    let p = pkce();
    let mut browser = Browser::new();
    let page = password(&app, &mut browser, &p).await;
    assert_challenge_page(&page);

    let (t, c) = (TenantId::parse(TENANT).unwrap(), ConnectionId::parse(CONN).unwrap());
    let accounts = &app.state.accounts;
    let account = accounts.get(&t, &c, EMAIL).await.unwrap().unwrap();
    accounts
        .set_changed_password(&t, &c, &account, &Secret::new("Another-Long-Pass-77"))
        .await
        .unwrap();
    let refused = answer(&app, &mut browser, &p, &page, "5", None).await.unwrap_err();
    assert_reason(&refused, 400, "challenge.account_changed");
    let verdicts = hooks
        .calls_to("challenge")
        .iter()
        .filter(|c| c.body["step"] == "verify")
        .count();
    assert_eq!(verdicts, 0, "refused before the hook judged the answer");
}
