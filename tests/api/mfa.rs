//! Portcullis's own second factor (TOTP, RFC 6238) on the dev connector,
//! through the scripted browser, over a real Redis shared by two replicas:
//! enrolment (QR code, secret shown as text, a first code, recovery codes
//! once), the challenge at the next sign-in, `amr` showing `pwd`, `otp` and
//! `mfa`, replay and throttling refused with their reason codes, recovery
//! codes single use, the page bound to its browser and CSRF-protected, the
//! seed sealed at rest, and the admin reset.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Page};
use crate::support::html_form::decode_entities;
use portcullis::clock::ManualClock;
use portcullis::mfa::totp;
use reqwest::StatusCode;
use serde_json::json;

pub(crate) fn clock() -> ManualClock {
    ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2040-06-01T12:00:10Z")
            .unwrap()
            .to_utc(),
    )
}

/// Two dev-mode replicas over one real Redis (one key prefix), on `clock`.
async fn replicas(clock: &ManualClock) -> (TestApp, TestApp) {
    replicas_with_prefix(clock).await.0
}

/// [`replicas`], with their Redis key prefix.
async fn replicas_with_prefix(clock: &ManualClock) -> ((TestApp, TestApp), String) {
    let prefix = crate::support::redis::prefix();
    let spawn = || {
        spawn_app(AppOptions {
            dev: true,
            redis_url: Some(crate::support::redis::url()),
            redis_prefix: Some(prefix.clone()),
            clock: Some(clock.clone()),
            ..AppOptions::default()
        })
    };
    let a = spawn().await;
    let b = spawn().await;
    ((a, b), prefix)
}

pub(crate) async fn admin_json(app: &TestApp, path: &str) -> serde_json::Value {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

pub(crate) async fn set_local_mfa(app: &TestApp, value: &str) {
    let resp = app
        .client
        .patch(app.url("/admin/v1/tenants/demo"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/merge-patch+json")
        .json(&json!({"settings": {"local_mfa": value}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
}

/// Starts a demo sign-in through the dev IdP as `email`; returns the page
/// the sign-in lands on (the MFA page, or the demo app).
pub(crate) async fn dev_sign_in(app: &TestApp, browser: &mut Browser, email: &str) -> Page {
    let login = browser.get(&app.url("/demo/login")).await;
    assert!(login.url.path().starts_with("/dev/"), "{}", browser.trail());
    browser.fill_and_submit(&login, None, &[("email", email)]).await
}

pub(crate) fn assert_reason(page: &Page, status: u16, reason: &str) {
    assert_eq!(page.status.as_u16(), status, "{}", page.body);
    assert!(
        page.body.contains(&format!("<code>{reason}</code>")),
        "reason {reason} not on the page: {}",
        page.body
    );
}

/// The secret the enrolment page shows as text.
pub(crate) fn shown_secret(page: &Page) -> String {
    let start = page.body.find("<code id=\"secret\"").expect("no secret on the page");
    let rest = &page.body[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest.find("</code>").unwrap();
    rest[open..close].replace(' ', "")
}

/// The TOTP code of `secret` at `clock`'s time, `offset` steps away.
pub(crate) fn code(secret: &str, clock: &ManualClock, offset: i64) -> String {
    use portcullis::clock::Clock;
    let key = totp::base32_decode(secret).unwrap();
    let step = totp::step_of(clock.unix()).unwrap().checked_add_signed(offset).unwrap();
    totp::code_at(totp::Algorithm::Sha1, &key, step, 6).unwrap()
}

/// A 6-digit code that is none of the window's codes.
fn wrong_code(secret: &str, clock: &ManualClock) -> String {
    let window: Vec<String> = (-1..=1).map(|o| code(secret, clock, o)).collect();
    (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !window.contains(c))
        .unwrap()
}

/// The `amr` values in the demo page's ID token claims.
pub(crate) fn amr_of(page: &Page) -> Vec<String> {
    let body = decode_entities(&page.body);
    let start = body.find("\"amr\": [").unwrap_or_else(|| panic!("no amr: {body}"));
    let rest = &body[start + 8..];
    let end = rest.find(']').unwrap();
    rest[..end]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Enrols `email` (local_mfa required) and signs in; returns the secret,
/// the recovery codes and the demo page.
pub(crate) async fn enrol(
    app: &TestApp,
    browser: &mut Browser,
    clock: &ManualClock,
    email: &str,
) -> (String, Vec<String>, Page) {
    let page = dev_sign_in(app, browser, email).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    let secret = shown_secret(&page);
    let done = browser
        .fill_and_submit(&page, None, &[("code", &code(&secret, clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let codes: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{}", done.body);
    let demo = browser.submit(&done, &done.form(None)).await;
    assert_eq!(demo.status, StatusCode::OK, "{}", demo.body);
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    (secret, codes, demo)
}

#[tokio::test]
async fn totp_enrolment_then_challenge_through_the_dev_idp_over_redis() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;
    set_local_mfa(&app, "required").await;
    let mut browser = Browser::new();

    // The first sign-in enrols: a QR code as inline SVG, the secret as text.
    let page = dev_sign_in(&app, &mut browser, "ada@demo.example").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    assert!(page.body.contains("<svg role=\"img\""), "{}", page.body);
    assert!(!page.body.contains("<script"), "no script on the page");
    assert!(page.body.contains("autocomplete=\"one-time-code\""));
    let csp = page.headers["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let secret = shown_secret(&page);
    assert_eq!(totp::base32_decode(&secret).unwrap().len(), 20);

    // A wrong first code is refused, with its reason; the page stays.
    let wrong = browser
        .fill_and_submit(&page, None, &[("code", &wrong_code(&secret, &clock))])
        .await;
    assert_reason(&wrong, 400, "mfa.bad_code");
    assert!(wrong.body.contains("aria-invalid=\"true\""));
    assert_eq!(shown_secret(&wrong), secret, "the same enrolment goes on");

    // The right code: recovery codes once, then the app, with otp + mfa.
    let first = code(&secret, &clock, 0);
    let done = browser.fill_and_submit(&wrong, None, &[("code", &first)]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Save your recovery codes"), "{}", done.body);
    let codes: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    let demo = browser.submit(&done, &done.form(None)).await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);

    // Next sign-in: a challenge. The code that confirmed the enrolment
    // (same time step) is refused as a replay.
    // Signed out: a fresh browser has no SSO session.
    browser = Browser::new();
    let challenge = dev_sign_in(&app, &mut browser, "ada@demo.example").await;
    assert_eq!(challenge.status, StatusCode::OK, "{}", challenge.body);
    assert!(challenge.body.contains("Two-step verification"), "{}", challenge.body);
    assert!(!challenge.body.contains("<svg"), "no enrolment again");
    let replay = browser.fill_and_submit(&challenge, None, &[("code", &first)]).await;
    assert_reason(&replay, 400, "mfa.code_reused");

    // The next step's code passes.
    clock.advance(chrono::Duration::seconds(30));
    let next = code(&secret, &clock, 0);
    let demo = browser.fill_and_submit(&replay, None, &[("code", &next)]).await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);

    // A recovery code signs in once; the second use is refused.
    // Signed out: a fresh browser has no SSO session.
    browser = Browser::new();
    let challenge = dev_sign_in(&app, &mut browser, "ada@demo.example").await;
    let demo = browser
        .fill_and_submit(&challenge, None, &[("code", &codes[3].to_lowercase())])
        .await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", demo.body);
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
    // Signed out: a fresh browser has no SSO session.
    browser = Browser::new();
    let challenge = dev_sign_in(&app, &mut browser, "ada@demo.example").await;
    let again = browser.fill_and_submit(&challenge, None, &[("code", &codes[3])]).await;
    assert_reason(&again, 400, "mfa.recovery_reused");
}

#[tokio::test]
async fn wrong_codes_are_throttled_across_replicas_and_counted() {
    let clock = clock();
    let (app, other) = replicas(&clock).await;
    set_local_mfa(&app, "required").await;
    let mut browser = Browser::new();
    let (secret, _, _) = enrol(&app, &mut browser, &clock, "bob@demo.example").await;
    // Signed out: a fresh browser has no SSO session.
    browser = Browser::new();
    clock.advance(chrono::Duration::seconds(60));

    // Four wrong codes on one replica...
    let mut page = dev_sign_in(&app, &mut browser, "bob@demo.example").await;
    let wrong = wrong_code(&secret, &clock);
    for _ in 0..4 {
        page = browser.fill_and_submit(&page, None, &[("code", &wrong)]).await;
        assert_reason(&page, 400, "mfa.bad_code");
    }
    // ...one on the other (the count is in the store)...
    let mut browser_b = Browser::new();
    let page_b = dev_sign_in(&other, &mut browser_b, "bob@demo.example").await;
    let page_b = browser_b.fill_and_submit(&page_b, None, &[("code", &wrong)]).await;
    assert_reason(&page_b, 400, "mfa.bad_code");
    // ...and now even the right code is refused on either.
    let right = code(&secret, &clock, 0);
    let refused = browser.fill_and_submit(&page, None, &[("code", &right)]).await;
    assert_reason(&refused, 429, "mfa.throttled");
    let refused_b = browser_b.fill_and_submit(&page_b, None, &[("code", &right)]).await;
    assert_reason(&refused_b, 429, "mfa.throttled");

    // Counted as failed sign-ins with their reason codes, and audited.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["mfa.bad_code", "mfa.throttled"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("portcullis_sign_ins_total") && l.contains(&format!("reason=\"{reason}\""))),
            "{reason} not counted"
        );
    }
    let audit = admin_json(&app, "/admin/v1/tenants/demo/audit?limit=100").await;
    let reasons: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"mfa.bad_code"), "{reasons:?}");
    assert!(reasons.contains(&"mfa.throttled"), "{reasons:?}");
    assert!(reasons.contains(&"mfa.enrolled"), "{reasons:?}");
}

#[tokio::test]
async fn the_mfa_page_is_bound_to_its_browser_and_its_forms_to_their_csrf_token() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;
    set_local_mfa(&app, "required").await;
    let mut browser = Browser::new();
    let page = dev_sign_in(&app, &mut browser, "eve@demo.example").await;
    assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    let secret = shown_secret(&page);

    // The same URL in another browser: refused.
    let mut stranger = Browser::new();
    let other = stranger.get(&page.url).await;
    assert_reason(&other, 400, "mfa.browser_mismatch");

    // The form without or with a wrong CSRF token: refused.
    let mut form = page.form(None);
    form.set("code", &code(&secret, &clock, 0));
    form.set("csrf", "");
    let missing = browser.submit(&page, &form).await;
    assert_reason(&missing, 403, "mfa.csrf_missing");
    let page = browser.get(&page.url).await;
    let mut form = page.form(None);
    form.set("code", &code(&secret, &clock, 0));
    form.set("csrf", "forged");
    let forged = browser.submit(&page, &form).await;
    assert_reason(&forged, 403, "mfa.csrf_mismatch");

    // A made-up handle: refused.
    let mut url = page.url.clone();
    url.set_query(Some("handle=nothing"));
    let unknown = browser.get(&url).await;
    assert_reason(&unknown, 400, "mfa.unknown_handle");
}

#[tokio::test]
async fn optional_mfa_challenges_enrolled_users_only_and_off_asks_nobody() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;

    // Off (the default): no second factor.
    let mut browser = Browser::new();
    let demo = dev_sign_in(&app, &mut browser, "off@demo.example").await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    assert_eq!(amr_of(&demo), ["pwd"]);

    // Optional: someone not enrolled goes straight through...
    set_local_mfa(&app, "optional").await;
    let mut browser = Browser::new();
    let demo = dev_sign_in(&app, &mut browser, "opt@demo.example").await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());

    // ...an enrolled user is challenged.
    set_local_mfa(&app, "required").await;
    let mut browser = Browser::new();
    let _ = enrol(&app, &mut browser, &clock, "enrolled@demo.example").await;
    // Signed out: a fresh browser has no SSO session.
    browser = Browser::new();
    set_local_mfa(&app, "optional").await;
    let challenge = dev_sign_in(&app, &mut browser, "enrolled@demo.example").await;
    assert!(challenge.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    assert!(challenge.body.contains("Two-step verification"));

    // The tenant's require_mfa makes the factor mandatory on the dev
    // connection even with local_mfa off (and is satisfied by it).
    set_local_mfa(&app, "off").await;
    let resp = app
        .client
        .put(app.url("/admin/v1/tenants/demo/mfa"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
    let mut browser = Browser::new();
    let page = dev_sign_in(&app, &mut browser, "newcomer@demo.example").await;
    assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    let secret = shown_secret(&page);
    let done = browser
        .fill_and_submit(&page, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    let demo = browser.submit(&done, &done.form(None)).await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", demo.body);
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
}

#[tokio::test]
async fn the_seed_is_sealed_at_rest_and_an_admin_reset_makes_the_user_enrol_again() {
    let clock = clock();
    let ((app, _other), prefix) = replicas_with_prefix(&clock).await;
    set_local_mfa(&app, "required").await;
    let mut browser = Browser::new();
    let (secret, _, _) = enrol(&app, &mut browser, &clock, "reset@demo.example").await;
    let users = admin_json(&app, "/admin/v1/tenants/demo/users").await;
    let sub = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "reset@demo.example")
        .unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_owned();

    // The stored record holds an envelope, not the secret.
    let key = portcullis::mfa::enrolment_key(&portcullis::ids::TenantId::parse("demo").unwrap(), &sub);
    let raw = app.state.store.get(&key).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&raw).contains(&secret),
        "the sealing store opens it"
    );
    let dump = crate::support::redis::cli(&[
        "-u",
        &crate::support::redis::url(),
        "--no-raw",
        "GET",
        &key.render(&prefix),
    ]);
    assert!(dump.contains("pcx1."), "{dump}");
    assert!(!dump.contains(&secret), "the seed is in clear in Redis: {dump}");

    // Reset through the admin API: 204, audited; unknown user 404.
    let reset = app
        .client
        .delete(app.url(&format!("/admin/v1/tenants/demo/users/{sub}/mfa")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    let unknown = app
        .client
        .delete(app.url("/admin/v1/tenants/demo/users/nobody/mfa"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let audit = admin_json(&app, "/admin/v1/tenants/demo/audit?limit=50").await;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.mfa_reset" && e["target"]["id"] == sub.as_str()),
        "{audit}"
    );

    // The next sign-in enrols again, with a new secret.
    // Signed out: a fresh browser has no SSO session.
    browser = Browser::new();
    let page = dev_sign_in(&app, &mut browser, "reset@demo.example").await;
    assert!(page.body.contains("<svg role=\"img\""), "{}", page.body);
    assert_ne!(shown_secret(&page), secret);
}

#[tokio::test]
async fn a_signed_in_user_enrols_on_their_own_where_mfa_is_optional() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;
    let enroll = app.url("/mfa/demo/enroll");

    // Not signed in: refused.
    let mut stranger = Browser::new();
    assert_reason(&stranger.get(&enroll).await, 401, "mfa.not_signed_in");

    // Signed in while local_mfa is off: not applicable.
    let mut browser = Browser::new();
    let demo = dev_sign_in(&app, &mut browser, "self@demo.example").await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    assert_reason(&browser.get(&enroll).await, 403, "mfa.not_applicable");

    // Optional: the enrolment page, a wrong then a right first code.
    set_local_mfa(&app, "optional").await;
    let page = browser.get(&enroll).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("<svg role=\"img\""));
    let secret = shown_secret(&page);
    let wrong = browser
        .fill_and_submit(&page, None, &[("code", &wrong_code(&secret, &clock))])
        .await;
    assert_reason(&wrong, 400, "mfa.bad_code");
    let done = browser
        .fill_and_submit(&wrong, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body.matches("<li><code>").count(), 10, "{}", done.body);
    assert!(done.forms().is_empty(), "nothing to continue: {}", done.body);

    // Enrolled: not again; and the next sign-in is challenged.
    assert_reason(&browser.get(&enroll).await, 409, "mfa.already_enrolled");
    let mut browser = Browser::new();
    let challenge = dev_sign_in(&app, &mut browser, "self@demo.example").await;
    assert!(challenge.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    clock.advance(chrono::Duration::seconds(30));
    let demo = browser
        .fill_and_submit(&challenge, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
}

/// Factors change only from a recent sign-in: sessions last hours, and a
/// browser left signed in must not let whoever sits at it set up a second
/// factor of their own. Up to ten minutes after signing in the session
/// enrols; past them, neither the page nor a code typed on a page it
/// showed before (403 `mfa.reauthentication_required`, telling the person
/// to sign in again); a fresh sign-in enrols straight away.
#[tokio::test]
async fn a_session_signed_in_over_ten_minutes_ago_enrols_nothing_until_the_person_signs_in_again() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;
    set_local_mfa(&app, "optional").await;
    let enroll = app.url("/mfa/demo/enroll");
    let email = "stale@demo.example";

    let mut browser = Browser::new();
    let demo = dev_sign_in(&app, &mut browser, email).await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    // Ten minutes on: still recent.
    clock.advance(chrono::Duration::minutes(10));
    let page = browser.get(&enroll).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let secret = shown_secret(&page);

    // A second later, and an hour later: refused.
    clock.advance(chrono::Duration::seconds(1));
    let typed = browser
        .fill_and_submit(&page, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_reason(&typed, 403, "mfa.reauthentication_required");
    assert!(
        typed.body.contains("sign in to the application again"),
        "{}",
        typed.body
    );
    clock.advance(chrono::Duration::hours(1));
    assert_reason(&browser.get(&enroll).await, 403, "mfa.reauthentication_required");
    let sub = sub_of(&app, email).await;
    let key = portcullis::mfa::enrolment_key(&portcullis::ids::TenantId::parse("demo").unwrap(), &sub);
    assert!(
        !app.state.store.exists(&key).await.unwrap(),
        "enrolled from a stale session"
    );

    // Signed in again (a new browser: this one's session would be reused).
    let mut fresh = Browser::new();
    dev_sign_in(&app, &mut fresh, email).await;
    let page = fresh.get(&enroll).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let secret = shown_secret(&page);
    let done = fresh
        .fill_and_submit(&page, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body.matches("<li><code>").count(), 10, "{}", done.body);
}

/// The settings of a raw store on the test Redis under `prefix` (what the
/// gateway opens underneath the sealing).
fn store_settings(prefix: &str) -> portcullis::config::Settings {
    let mut s = portcullis::config::Settings::default();
    s.dev.enabled = true;
    s.dev.force = true;
    s.store.backend = Some("redis".into());
    s.store.redis_url = Some(portcullis::secret::Secret::new(crate::support::redis::url()));
    s.store.key_prefix = prefix.to_owned();
    s.secrets.master_key = Some(portcullis::secret::Secret::new(crate::support::app::TEST_MASTER_KEY));
    s
}

#[tokio::test]
async fn an_enrolment_is_in_the_backup_sealed_and_works_after_a_restore() {
    let clock = clock();
    let ((app, _other), prefix) = replicas_with_prefix(&clock).await;
    set_local_mfa(&app, "required").await;
    let mut browser = Browser::new();
    let (secret, _, _) = enrol(&app, &mut browser, &clock, "backup@demo.example").await;

    // Exported: the enrolment record, its seed still sealed.
    let shared: portcullis::clock::SharedClock = std::sync::Arc::new(clock.clone());
    let raw = portcullis::app::open_store(&store_settings(&prefix), shared.clone())
        .await
        .unwrap();
    let backup = portcullis::backup::export(&raw, portcullis::clock::Clock::now(&clock))
        .await
        .unwrap();
    let doc = serde_json::to_value(&backup).unwrap();
    let enrolment = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "t:demo:mfa" && r["name"].as_str().unwrap().starts_with("enrolment:"))
        .unwrap_or_else(|| panic!("no enrolment in the backup: {doc:#}"))
        .to_string();
    assert!(enrolment.contains("pcx1."), "{enrolment}");
    assert!(!enrolment.contains(&secret), "the seed is in clear in the backup");

    // Restored elsewhere: the same person is challenged, and the seed works.
    let restored_prefix = crate::support::redis::prefix();
    let settings = store_settings(&restored_prefix);
    let raw2 = portcullis::app::open_store(&settings, shared).await.unwrap();
    let sealed = portcullis::app::seal_store(&settings, raw2).unwrap();
    portcullis::backup::restore(&sealed, doc, false, portcullis::clock::Clock::unix(&clock))
        .await
        .unwrap();
    let restored = spawn_app(AppOptions {
        dev: true,
        redis_url: Some(crate::support::redis::url()),
        redis_prefix: Some(restored_prefix),
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    let mut browser = Browser::new();
    let challenge = dev_sign_in(&restored, &mut browser, "backup@demo.example").await;
    assert!(challenge.body.contains("Two-step verification"), "{}", challenge.body);
    clock.advance(chrono::Duration::seconds(30));
    let demo = browser
        .fill_and_submit(&challenge, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
}

/// A session opened without a second factor (the password alone) changes
/// no second factor once the account has one: an attacker who knew only
/// the password, signed in before its owner enrolled, could otherwise add
/// a passkey of their own or remove the owner's. Its passkeys page and
/// its posts are refused (`mfa.session_without_second_factor`); before the
/// account had a factor the same session could open it (the first factor
/// is set up by the password alone), and a session that used the second
/// factor still can.
#[tokio::test]
async fn a_session_without_the_second_factor_changes_none_of_the_accounts_factors() {
    let clock = clock();
    let app = spawn_app(AppOptions {
        dev: true,
        redis_url: Some(crate::support::redis::url()),
        redis_prefix: Some(crate::support::redis::prefix()),
        clock: Some(clock.clone()),
        public_host: Some("localhost".into()),
        configure: Some(std::sync::Arc::new(|s| s.passkeys.enabled = true)),
        ..AppOptions::default()
    })
    .await;
    set_local_mfa(&app, "optional").await;
    let passkeys = app.url("/mfa/demo/passkeys");
    let email = "owner@demo.example";

    // The attacker's session, with the password alone, before any factor.
    let mut attacker = Browser::new();
    let demo = dev_sign_in(&app, &mut attacker, email).await;
    assert!(demo.url.path().starts_with("/demo/callback"), "{}", attacker.trail());
    let page = attacker.get(&passkeys).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);

    // The owner enrols TOTP from a session of their own.
    let mut owner = Browser::new();
    dev_sign_in(&app, &mut owner, email).await;
    let enrolment = owner.get(&app.url("/mfa/demo/enroll")).await;
    let secret = shown_secret(&enrolment);
    let done = owner
        .fill_and_submit(&enrolment, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);

    // The attacker's session now changes nothing: neither the page nor a
    // post from the form it showed before.
    assert_reason(&attacker.get(&passkeys).await, 403, "mfa.session_without_second_factor");
    let mut form = page.form(None);
    form.fields.retain(|(k, _)| k == "csrf");
    form.fields.push(("action".into(), "remove".into()));
    form.fields.push(("id".into(), "made-up".into()));
    assert_reason(
        &attacker.submit(&page, &form).await,
        403,
        "mfa.session_without_second_factor",
    );

    // A session that used the second factor manages the passkeys.
    clock.advance(chrono::Duration::seconds(30));
    let mut signed_in = Browser::new();
    let challenge = dev_sign_in(&app, &mut signed_in, email).await;
    assert!(
        challenge.url.path().starts_with("/mfa/demo/dev"),
        "{}",
        signed_in.trail()
    );
    let demo = signed_in
        .fill_and_submit(&challenge, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
    let page = signed_in.get(&passkeys).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

/// Passkeys are added and removed only from a recent sign-in: a session
/// that used its second factor an hour ago changes none, neither through
/// the page nor by a removal posted from a page it showed before (403
/// `mfa.reauthentication_required`); right after a fresh sign-in with the
/// second factor the passkey is removed.
#[tokio::test]
async fn a_session_signed_in_an_hour_ago_removes_no_passkey_until_the_person_signs_in_again() {
    let clock = clock();
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        public_host: Some("localhost".into()),
        configure: Some(std::sync::Arc::new(|s| s.passkeys.enabled = true)),
        ..AppOptions::default()
    })
    .await;
    set_local_mfa(&app, "optional").await;
    let passkeys = app.url("/mfa/demo/passkeys");
    let email = "keys@demo.example";

    // TOTP first, from a fresh session.
    let mut first = Browser::new();
    dev_sign_in(&app, &mut first, email).await;
    let page = first.get(&app.url("/mfa/demo/enroll")).await;
    let secret = shown_secret(&page);
    let done = first
        .fill_and_submit(&page, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);

    // A session that used it adds a passkey.
    let sign_in_with_totp = |browser: Browser| {
        let (app, clock, secret) = (&app, &clock, &secret);
        async move {
            let mut browser = browser;
            let challenge = dev_sign_in(app, &mut browser, email).await;
            let demo = browser
                .fill_and_submit(&challenge, None, &[("code", &code(secret, clock, 0))])
                .await;
            assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
            browser
        }
    };
    clock.advance(chrono::Duration::seconds(30));
    let mut browser = sign_in_with_totp(Browser::new()).await;
    let page = browser.get(&passkeys).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let added = crate::support::soft_passkey::register_on_page(&mut browser, &page, &app.base, "Laptop").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let remove_form = |page: &Page| {
        page.forms()
            .into_iter()
            .find(|f| f.field("action") == Some("remove"))
            .unwrap_or_else(|| panic!("no passkey to remove: {}", page.body))
    };
    let sub = sub_of(&app, email).await;
    assert_eq!(crate::passkeys::passkey_names(&app, &sub).await, ["Laptop"]);

    // An hour later the same session changes nothing.
    clock.advance(chrono::Duration::hours(1));
    let refused = browser.submit(&added, &remove_form(&added)).await;
    assert_reason(&refused, 403, "mfa.reauthentication_required");
    assert_reason(&browser.get(&passkeys).await, 403, "mfa.reauthentication_required");
    assert_eq!(crate::passkeys::passkey_names(&app, &sub).await, ["Laptop"]);

    // Signed in again with the second factor: removed.
    let mut fresh = sign_in_with_totp(Browser::new()).await;
    let page = fresh.get(&passkeys).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let removed = fresh.submit(&page, &remove_form(&page)).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert!(removed.body.contains("The passkey was removed."), "{}", removed.body);
    assert_eq!(crate::passkeys::passkey_names(&app, &sub).await, Vec::<String>::new());
}

/// A pending enrolment belongs to the sign-in that started it. Someone who
/// knows the password and signs in while the owner is enrolling does not
/// get the owner's secret (before, every sign-in of the user showed the
/// same pending secret for 15 minutes, so the attacker could copy it and
/// keep the owner's second factor for good); their sign-in replaces the
/// pending enrolment, so the owner's page says so and shows a fresh
/// secret, which the attacker never saw, and the owner enrols with it.
#[tokio::test]
async fn a_pending_enrolment_is_its_sign_ins_own_and_never_shown_to_another() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;
    set_local_mfa(&app, "required").await;
    let email = "enrolling@demo.example";

    let mut owner = Browser::new();
    let owners_page = dev_sign_in(&app, &mut owner, email).await;
    assert!(owners_page.url.path().starts_with("/mfa/demo/dev"), "{}", owner.trail());
    let owners_secret = shown_secret(&owners_page);
    let mut attacker = Browser::new();
    let attackers_page = dev_sign_in(&app, &mut attacker, email).await;
    let attackers_secret = shown_secret(&attackers_page);
    assert_ne!(attackers_secret, owners_secret, "another sign-in's secret shown");

    // The owner's code: the enrolment was started elsewhere since.
    let told = owner
        .fill_and_submit(&owners_page, None, &[("code", &code(&owners_secret, &clock, 0))])
        .await;
    assert_reason(&told, 400, "mfa.enrolment_started_elsewhere");
    let fresh = shown_secret(&told);
    assert_ne!(fresh, owners_secret);
    assert_ne!(fresh, attackers_secret);
    let done = owner
        .fill_and_submit(&told, None, &[("code", &code(&fresh, &clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Save your recovery codes"), "{}", done.body);

    // The attacker's secret confirms nothing, and signs no one in: the
    // account has the owner's factor now, so the attacker's sign-in adds
    // none and is asked for it.
    let refused = attacker
        .fill_and_submit(&attackers_page, None, &[("code", &code(&attackers_secret, &clock, 0))])
        .await;
    assert_reason(&refused, 409, "mfa.enrolment_changed");
    clock.advance(chrono::Duration::seconds(30));
    let mut later = Browser::new();
    let challenge = dev_sign_in(&app, &mut later, email).await;
    let wrong = later
        .fill_and_submit(&challenge, None, &[("code", &code(&attackers_secret, &clock, 0))])
        .await;
    assert_reason(&wrong, 400, "mfa.bad_code");
    let demo = later
        .fill_and_submit(&wrong, None, &[("code", &code(&fresh, &clock, 0))])
        .await;
    assert_eq!(amr_of(&demo), ["pwd", "otp", "mfa"]);
}

/// The `sub` of the demo tenant's user `email` (admin API).
pub(crate) async fn sub_of(app: &TestApp, email: &str) -> String {
    let users = admin_json(app, "/admin/v1/tenants/demo/users").await;
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .unwrap_or_else(|| panic!("no user {email}: {users}"))["sub"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A sign-in left at the enrolment adds no factor to an account that has
/// one by then. Its step was decided when its answer started waiting (up to
/// ten minutes); meanwhile the owner enrolled in another browser. Whoever
/// parked it with the password alone is refused at its first code
/// (`mfa.enrolment_changed`, 409) and asked for the owner's factor instead:
/// the owner's enrolment stays the account's only one, and no session opens.
#[tokio::test]
async fn a_sign_in_parked_at_the_enrolment_adds_no_factor_once_the_owner_enrolled_elsewhere() {
    let clock = clock();
    let (app, _other) = replicas(&clock).await;
    set_local_mfa(&app, "required").await;
    let email = "parked@demo.example";

    // The attacker, with the password, parks a sign-in at the enrolment.
    let mut attacker = Browser::new();
    let parked = dev_sign_in(&app, &mut attacker, email).await;
    assert!(parked.url.path().starts_with("/mfa/demo/dev"), "{}", attacker.trail());
    let attackers_secret = shown_secret(&parked);

    // The owner enrols in another browser.
    let mut owner = Browser::new();
    let (owners_secret, _, _) = enrol(&app, &mut owner, &clock, email).await;

    // The parked sign-in's first code: refused, and the sign-in now asks
    // for the owner's factor; reloaded, it starts no enrolment either.
    let refused = attacker
        .fill_and_submit(&parked, None, &[("code", &code(&attackers_secret, &clock, 0))])
        .await;
    assert_reason(&refused, 409, "mfa.enrolment_changed");
    assert!(refused.body.contains("Two-step verification"), "{}", refused.body);
    assert!(!refused.body.contains("<svg"), "an enrolment shown: {}", refused.body);
    let reloaded = attacker.get(&parked.url).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.body);
    assert!(reloaded.body.contains("Two-step verification"), "{}", reloaded.body);
    assert!(!reloaded.body.contains("<svg"), "an enrolment shown: {}", reloaded.body);

    // The owner's enrolment is the account's only one, and the attacker
    // has no session.
    let sub = sub_of(&app, email).await;
    let key = portcullis::mfa::enrolment_key(&portcullis::ids::TenantId::parse("demo").unwrap(), &sub);
    let stored = app.state.store.get(&key).await.unwrap().expect("the owner's enrolment");
    assert!(
        String::from_utf8_lossy(&stored).contains(&owners_secret),
        "the enrolment was replaced"
    );
    assert_reason(
        &attacker.get(&app.url("/mfa/demo/enroll")).await,
        401,
        "mfa.not_signed_in",
    );
}

/// A session opened without Portcullis's second factor (`local_mfa` off)
/// is not reused once the tenant sets `local_mfa = required`: the next
/// app's sign-in asks for the factor, as a sign-in now would
/// (`sso.mfa_required`), and gets no code from the session. With
/// `optional`, a user without a second factor is still answered from it.
#[tokio::test]
async fn a_session_without_a_second_factor_is_not_reused_once_local_mfa_is_required() {
    use crate::revocation::{dev_app, register, sign_in, start, submit_login, DEMO};
    use crate::support::browser::Nav;
    use crate::support::logs::Captured;
    let app = dev_app().await;
    let app1 = register(&app, "app1").await;
    let app2 = register(&app, "app2").await;
    let mut browser = Browser::new();
    let _ = sign_in(&app, &mut browser, &app1, DEMO, "wes@demo.example").await;

    // `optional`, and the user has no second factor: reused.
    set_local_mfa(&app, "optional").await;
    let (nav, _) = start(&app, &mut browser, &app2, DEMO).await;
    assert!(matches!(nav, Nav::Stopped(_)), "{}", browser.trail());

    set_local_mfa(&app, "required").await;
    let (logs, _guard) = Captured::start();
    let (nav, _) = start(&app, &mut browser, &app2, DEMO).await;
    let Nav::Page(login) = nav else {
        panic!("a code from a session without the second factor: {}", browser.trail());
    };
    assert!(login.url.path().starts_with("/dev/"), "{}", browser.trail());
    assert_eq!(logs.with_reason("sso.mfa_required").len(), 1, "{}", logs.text());
    // The sign-in goes on to the factor (enrolment: none yet).
    match submit_login(&mut browser, &app2, &login, "wes@demo.example").await {
        Nav::Page(page) => assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail()),
        Nav::Stopped(url) => panic!("a code without the second factor: {url}"),
    }
}

/// An admin resets a user's two-step verification while a sign-in parked
/// at the enrolment confirms its first code (its code checked, its write
/// on the way): the enrolment is written only while the pending one whose
/// code was checked is still there, in the same step, so the reset wins
/// and no factor outlives it (`mfa.not_enrolled`).
#[tokio::test]
async fn an_admin_reset_during_an_enrolments_confirmation_leaves_no_factor() {
    let clock = clock();
    let hold = crate::support::held_store::Hold::default();
    let app = spawn_app(AppOptions {
        dev: true,
        redis_url: Some(crate::support::redis::url()),
        redis_prefix: Some(crate::support::redis::prefix()),
        clock: Some(clock.clone()),
        wrap_store: Some(hold.wrap()),
        ..AppOptions::default()
    })
    .await;
    set_local_mfa(&app, "required").await;
    let email = "race@demo.example";
    let mut browser = Browser::new();
    let page = dev_sign_in(&app, &mut browser, email).await;
    assert!(page.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    let users = admin_json(&app, "/admin/v1/tenants/demo/users").await;
    let sub = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_owned();

    let held = hold.arm_any(&format!("enrolment:{sub}"));
    let first_code = code(&shown_secret(&page), &clock, 0);
    let fields = [("code", first_code.as_str())];
    let confirming = browser.fill_and_submit(&page, None, &fields);
    let resetting = async {
        held.arrived.await.unwrap();
        let reset = app
            .client
            .delete(app.url(&format!("/admin/v1/tenants/demo/users/{sub}/mfa")))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status(), StatusCode::NO_CONTENT);
        let _ = held.release.send(());
    };
    let (refused, ()) = tokio::join!(confirming, resetting);
    assert_reason(&refused, 400, "mfa.not_enrolled");
    let key = portcullis::mfa::enrolment_key(&portcullis::ids::TenantId::parse("demo").unwrap(), &sub);
    assert!(
        app.state.store.get(&key).await.unwrap().is_none(),
        "no enrolment outlives the reset"
    );
}

/// Under `local_mfa = optional` a session opened with the password alone
/// is not reused once its user has a second factor (enrolled since, here
/// from that very session): the next app's sign-in asks for the factor, as
/// a sign-in now would (`sso.mfa_required`), and gets no code from the
/// session; answered, it opens a session that is reused. A user without a
/// second factor is still answered from their session, silently.
#[tokio::test]
async fn a_session_opened_before_its_user_enrolled_is_not_reused_where_local_mfa_is_optional() {
    use crate::revocation::{redeem, register, sign_in, start, submit_login, Code, DEMO};
    use crate::support::browser::Nav;
    use crate::support::logs::Captured;
    let clock = clock();
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    set_local_mfa(&app, "optional").await;
    let app1 = register(&app, "app1").await;
    let app2 = register(&app, "app2").await;
    let email = "zoe@demo.example";

    // Both sign in with the password alone: neither has a factor yet.
    let mut browser = Browser::new();
    let _ = sign_in(&app, &mut browser, &app1, DEMO, email).await;
    let mut plain = Browser::new();
    let _ = sign_in(&app, &mut plain, &app1, DEMO, "yul@demo.example").await;
    // One of them enrols from the session.
    let enrolment = browser.get(&app.url("/mfa/demo/enroll")).await;
    assert_eq!(enrolment.status, StatusCode::OK, "{}", enrolment.body);
    let secret = shown_secret(&enrolment);
    let done = browser
        .fill_and_submit(&enrolment, None, &[("code", &code(&secret, &clock, 0))])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);

    // No second factor: reused, nothing asked.
    let (logs, _guard) = Captured::start();
    let (nav, _) = start(&app, &mut plain, &app2, DEMO).await;
    assert!(matches!(nav, Nav::Stopped(_)), "{}", plain.trail());
    assert!(logs.with_reason("sso.mfa_required").is_empty(), "{}", logs.text());

    // Enrolled since the session opened: not reused.
    let (nav, verifier) = start(&app, &mut browser, &app2, DEMO).await;
    let Nav::Page(login) = nav else {
        panic!("a code from a session without the second factor: {}", browser.trail());
    };
    assert!(login.url.path().starts_with("/dev/"), "{}", browser.trail());
    let refused = logs.with_reason("sso.mfa_required");
    assert_eq!(refused.len(), 1, "{}", logs.text());
    assert_eq!(refused[0]["fields"]["local_mfa"], "Optional", "{}", logs.text());
    // The sign-in asks for the factor the user has (no enrolment)...
    let challenge = match submit_login(&mut browser, &app2, &login, email).await {
        Nav::Page(page) => page,
        Nav::Stopped(url) => panic!("a code without the second factor: {url}"),
    };
    assert!(challenge.url.path().starts_with("/mfa/demo/dev"), "{}", browser.trail());
    assert!(challenge.body.contains("Two-step verification"), "{}", challenge.body);
    assert!(
        !challenge.body.contains("<svg"),
        "an enrolment shown: {}",
        challenge.body
    );
    // ...and, answered, gives the app its code from a session that showed it.
    clock.advance(chrono::Duration::seconds(30));
    let mut form = challenge.form(None);
    form.set("code", &code(&secret, &clock, 0));
    let host = app2.redirect.host_str().unwrap().to_owned();
    let back = browser
        .submit_until(&challenge, &form, &move |u: &url::Url| {
            u.host_str() == Some(host.as_str())
        })
        .await
        .stopped();
    let issued = Code {
        code: back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned(),
        verifier,
    };
    let tokens = redeem(&app, &app2, &issued).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    let (nav, _) = start(&app, &mut browser, &app2, DEMO).await;
    assert!(matches!(nav, Nav::Stopped(_)), "{}", browser.trail());
    assert_eq!(logs.with_reason("sso.mfa_required").len(), 1, "{}", logs.text());
}
