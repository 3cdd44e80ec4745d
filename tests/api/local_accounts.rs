//! Local accounts (`"kind":"local"`): sign-up → code by mail (a real aiosmtpd
//! on loopback) → confirm → sign-in through the broker and the provider, in
//! the scripted browser, outside dev mode. Every refusal asserts its reason
//! code: unconfirmed, wrong and reused codes, too many attempts, breached and
//! weak passwords, CSRF, lockout counted across two replicas over Redis; and
//! unknown emails get the same answer as known ones.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{all_at_once, Browser, Nav, Page, Pending};
use crate::support::local::{assert_reason, link, pkce, Pkce};
use crate::support::redis;
use crate::support::smtp::SmtpServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use url::Url;

const TENANT: &str = "acme";
const CONN: &str = "pw";
const CLIENT: &str = "local-app";
const REDIRECT: &str = "http://127.0.0.1:9/cb";
const GOOD_PASSWORD: &str = "Tangerine-Orbit-42";

/// A gateway (not in dev mode) sending mail to `smtp`, with cheap argon2
/// parameters (the production ones are measured in the unit tests).
async fn gateway(smtp: &SmtpServer, redis: Option<(String, String)>) -> TestApp {
    gateway_with(smtp, redis, true).await
}

/// The same, with the shipped argon2 parameters unless `cheap`.
async fn gateway_with(smtp: &SmtpServer, redis: Option<(String, String)>, cheap: bool) -> TestApp {
    let url = smtp.url();
    spawn_app(AppOptions {
        redis_url: redis.as_ref().map(|r| r.0.clone()),
        redis_prefix: redis.map(|r| r.1),
        configure: Some(Arc::new(move |s| {
            s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
            s.mail.from = Some("Acme sign-in <signin@acme.example>".into());
            if cheap {
                s.local.argon2_memory_kib = 8192;
                s.local.argon2_iterations = 1;
            }
        })),
        ..AppOptions::default()
    })
    .await
}

/// Creates the tenant (named `name`) and its local connection (201
/// through the admin API).
async fn create_tenant_and_connection(app: &TestApp, name: &str) {
    app.create_tenant(TENANT, name, &["acme.example"]).await;
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{TENANT}/connections"),
            Some(json!({"id": CONN, "kind": "local"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "local", "{body}");
}

/// Creates the tenant, its local connection and a public app.
async fn setup(app: &TestApp) {
    create_tenant_and_connection(app, "Acme Corp").await;
    let redirect = Url::parse(REDIRECT).unwrap();
    app.create_client(CLIENT, "Local app", &[&redirect], true).await;
}

fn authorize_url(app: &TestApp, p: &Pkce) -> Url {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid email profile")
        .append_pair("state", "st")
        .append_pair("nonce", "nn")
        .append_pair("code_challenge", &p.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("tenant", TENANT);
    url
}

fn at_app(u: &Url) -> bool {
    u.as_str().starts_with(REDIRECT)
}

/// Starts a sign-in at the app: the browser lands on the local sign-in page.
async fn start(app: &TestApp, browser: &mut Browser, p: &Pkce) -> Page {
    let page = browser.get(&authorize_url(app, p)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.url.path(),
        format!("/local/{TENANT}/{CONN}/sign-in"),
        "{}",
        browser.trail()
    );
    page
}

/// Creates a confirmed account with `password` on the connection (as an
/// admin does).
async fn create_account(app: &TestApp, email: &str, password: &str) {
    app.state
        .accounts
        .admin_create(
            &portcullis::ids::TenantId::parse(TENANT).unwrap(),
            &portcullis::ids::ConnectionId::parse(CONN).unwrap(),
            &Default::default(),
            email,
            Some(&portcullis::secret::Secret::new(password)),
            Default::default(),
        )
        .await
        .unwrap();
}

/// Signs in with `email` and `password` on the sign-in `page`: where the
/// browser is sent back to the app (with its code).
async fn sign_in_from(browser: &mut Browser, page: &Page, email: &str, password: &str) -> Url {
    let mut form = page.form(None);
    form.set("email", email);
    form.set("password", password);
    browser.submit_until(page, &form, &at_app).await.stopped()
}

/// Signs up `email` from the sign-in page and returns the confirm page.
async fn sign_up(browser: &mut Browser, sign_in: &Page, email: &str, password: &str) -> Page {
    let form = browser.get(&link(sign_in, "Create account")).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    browser
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", email),
                ("given_name", "Grace"),
                ("family_name", "Hopper"),
                ("password", password),
                ("password_confirm", password),
            ],
        )
        .await
}

async fn redeem(app: &TestApp, code: &str, p: &Pkce) -> Value {
    let resp = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", CLIENT),
            ("code_verifier", &p.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn local_sign_up_confirm_by_mailed_code_then_sign_in_issues_pwd_tokens() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "grace@acme.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    assert!(sign_in.body.contains("Create account"), "{}", sign_in.body);
    assert!(!sign_in.body.contains("<script"), "no JavaScript needed");

    let confirm = sign_up(&mut browser, &sign_in, email, GOOD_PASSWORD).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(confirm.body.contains("Confirm your email"), "{}", confirm.body);
    let mail = smtp.wait_for(email).await;
    assert_eq!(mail.from, "signin@acme.example");
    assert!(mail.subject.contains("Acme Corp"), "{}", mail.subject);
    let code = mail.code();

    // Not confirmed yet: the right password is refused as a wrong one
    // (see `local_a_sign_up_does_not_tell_whether_the_address_had_an_account`).
    let early = browser.get(&sign_in.url).await;
    let early = browser
        .fill_and_submit(&early, None, &[("email", email), ("password", GOOD_PASSWORD)])
        .await;
    assert_reason(&early, 401, "local.bad_credentials");
    assert!(early.body.contains("not confirmed yet"), "{}", early.body);

    // A wrong code first, then the right one.
    let confirm = browser.get(&link(&early, "Confirm your email")).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", wrong)])
        .await;
    assert_reason(&refused, 400, "local.code_invalid");
    let signed = browser
        .fill_and_submit(&refused, None, &[("email", email), ("code", &code)])
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.body);
    assert!(signed.body.contains("confirmed"), "{}", signed.body);

    // The code is single use.
    let again = browser.get(&link(&signed, "Confirm your email")).await;
    let again = browser
        .fill_and_submit(&again, None, &[("email", email), ("code", &code)])
        .await;
    assert_reason(&again, 400, "local.code_invalid");

    // Sign in: back at the app with a code.
    let form_page = browser.get(&sign_in.url).await;
    let back = sign_in_from(&mut browser, &form_page, "Grace@Acme.Example", GOOD_PASSWORD).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("st"));
    let tokens = redeem(&app, q.get("code").unwrap(), &p).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let claims: Value = app
        .state
        .provider
        .keys
        .verify(id_token, "JWT", &app.state.provider.iss())
        .await
        .unwrap();
    assert_eq!(claims["email"], email, "{claims}");
    assert_eq!(claims["email_verified"], true, "{claims}");
    assert_eq!(claims["amr"], json!(["pwd"]), "{claims}");
    assert!(claims["auth_time"].as_i64().is_some(), "{claims}");
    assert_eq!(claims["name"], "Grace Hopper", "{claims}");
}

/// Someone who signs up with an address and a password of their own and
/// then signs in with that password learns nothing: where the address was
/// free (their sign-up made an unconfirmed account with their password) and
/// where an account was there already (their password is wrong), the
/// answer is the same wrong-password page, and both count toward the
/// lockout alike.
#[tokio::test]
async fn local_a_sign_up_does_not_tell_whether_the_address_had_an_account() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let taken = "ada@acme.example";
    create_account(&app, taken, GOOD_PASSWORD).await;
    let free = "eve.target@acme.example";
    let mine = "Attackers-Own-Pass-1";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let normalise = |page: &Page, email: &str| {
        let body = page.body.replace(email, "EMAIL");
        let csrf = page.form(None).field("csrf").unwrap().to_owned();
        body.replace(&csrf, "CSRF")
    };
    let mut answers = Vec::new();
    for email in [taken, free] {
        sign_up(&mut browser, &sign_in, email, mine).await;
        let mut last = None;
        for _ in 0..5 {
            let page = browser.get(&sign_in.url).await;
            let answer = browser
                .fill_and_submit(&page, None, &[("email", email), ("password", mine)])
                .await;
            last = Some(answer);
        }
        let answer = last.unwrap();
        // The fifth failure locks either account the same way.
        let page = browser.get(&sign_in.url).await;
        let locked = browser
            .fill_and_submit(&page, None, &[("email", email), ("password", mine)])
            .await;
        assert_reason(&locked, 429, "local.locked");
        answers.push((answer.status, normalise(&answer, email)));
    }
    assert_eq!(answers[0], answers[1], "the same answer, account or not");
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert!(
        answers[0].1.contains("<code>local.bad_credentials</code>"),
        "{}",
        answers[0].1
    );
}

/// After the operator raises the argon2 parameters, an account hashed
/// with the earlier, cheaper ones (until its owner's next sign-in re-hashes
/// it) answers a wrong password no sooner than an address with no account,
/// which costs a hash at the new parameters: the time does not tell the
/// accounts made before from unknown addresses.
#[tokio::test]
async fn local_an_account_hashed_with_earlier_parameters_answers_as_slowly_as_an_unknown_address() {
    let smtp = SmtpServer::start();
    let server = redis::RedisServer::start();
    let prefix = redis::prefix();
    // Made with the cheapest parameters...
    let before = gateway_with(&smtp, Some((server.url(), prefix.clone())), true).await;
    setup(&before).await;
    let known = "old@acme.example";
    create_account(&before, known, GOOD_PASSWORD).await;
    // ...checked after the parameters were raised to the shipped ones.
    let app = gateway_with(&smtp, Some((server.url(), prefix)), false).await;
    let unknown = "nobody@acme.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let mut timing = Vec::new();
    for email in [unknown, known, unknown, known, unknown, known] {
        let page = browser.get(&sign_in.url).await;
        let t0 = std::time::Instant::now();
        let answer = browser
            .fill_and_submit(&page, None, &[("email", email), ("password", "Wrong-Password-99")])
            .await;
        timing.push(t0.elapsed());
        assert_reason(&answer, 401, "local.bad_credentials");
    }
    // The fastest of three each. Unpadded, the old account answers three to
    // four times sooner (its hash at 8 MiB and one pass against 19 MiB and
    // two, beside the same page); with the dummy's check after its own, a
    // little later than an unknown address, well within a factor of 2.
    let u = [timing[0], timing[2], timing[4]].into_iter().min().unwrap();
    let k = [timing[1], timing[3], timing[5]].into_iter().min().unwrap();
    assert!(k * 2 > u && u * 2 > k, "known {k:?} vs unknown {u:?}");
}

#[tokio::test]
async fn local_unknown_and_known_emails_get_the_same_answer() {
    let smtp = SmtpServer::start();
    // The shipped argon2 cost, so that skipping the hash would show.
    let app = gateway_with(&smtp, None, false).await;
    setup(&app).await;
    let known = "ada@acme.example";
    let unknown = "nobody@acme.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    sign_up(&mut browser, &sign_in, known, GOOD_PASSWORD).await;
    let code = smtp.wait_for(known).await.code();
    let c = browser.get(&link(&sign_in, "Confirm your email")).await;
    let ok = browser
        .fill_and_submit(&c, None, &[("email", known), ("code", &code)])
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    // Sign-up again with a taken address: the same page as for a new one.
    let normalise = |page: &Page, email: &str| {
        let body = page.body.replace(email, "EMAIL");
        let csrf = page.form(None).field("csrf").unwrap().to_owned();
        body.replace(&csrf, "CSRF")
    };
    let taken = sign_up(&mut browser, &sign_in, known, GOOD_PASSWORD).await;
    let fresh = sign_up(&mut browser, &sign_in, "new@acme.example", GOOD_PASSWORD).await;
    assert_eq!(taken.status, fresh.status);
    assert_eq!(normalise(&taken, known), normalise(&fresh, "new@acme.example"));
    // The owner of the taken address got no second message.
    smtp.assert_none_after(known, 1, std::time::Duration::from_millis(300))
        .await;

    // A wrong password and an unknown email: the same status and reason,
    // and the unknown email costs a hash too.
    let mut timing = Vec::new();
    let mut bodies = Vec::new();
    for email in [known, unknown, known, unknown, known, unknown] {
        let page = browser.get(&sign_in.url).await;
        let t0 = std::time::Instant::now();
        let answer = browser
            .fill_and_submit(&page, None, &[("email", email), ("password", "Wrong-Password-99")])
            .await;
        timing.push(t0.elapsed());
        assert_reason(&answer, 401, "local.bad_credentials");
        bodies.push(normalise(&answer, email));
    }
    assert_eq!(bodies[0], bodies[1], "the page does not depend on the address");
    // The fastest of three each: an unknown email costs the same hash as a
    // known one. Without the dummy hash the unknown address answers about 35
    // times faster (5 ms against 160 ms), so a factor of 3 still tells the
    // two apart while a busy machine (CI shares its cores) does not flake.
    let k = [timing[0], timing[2], timing[4]].into_iter().min().unwrap();
    let u = [timing[1], timing[3], timing[5]].into_iter().min().unwrap();
    assert!(u * 3 > k && k * 3 > u, "known {k:?} vs unknown {u:?}");

    // Forgot password: the same answer; only the real account gets a code.
    let mut answers = Vec::new();
    for email in [known, unknown] {
        let page = browser.get(&link(&sign_in, "Forgot password?")).await;
        let answer = browser.fill_and_submit(&page, None, &[("email", email)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answers.push(normalise(&answer, email));
    }
    assert_eq!(answers[0], answers[1]);
    smtp.wait_for_after(known, 1).await;
    smtp.assert_none_after(unknown, 0, std::time::Duration::from_millis(300))
        .await;
}

/// Someone who signs up first with another person's address never signs in
/// with the password they chose: once a second sign-up asked for the
/// address, the owner who confirms it also chooses the password, by a code
/// mailed to it (a pre-registration account takeover otherwise).
#[tokio::test]
async fn local_a_sign_up_with_someone_elses_address_never_signs_in_with_its_password() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "vera@acme.example";
    let attackers = "Juniper-Harbor-93";
    let p = pkce();
    let mut attacker = Browser::new();
    let page = start(&app, &mut attacker, &p).await;
    let form = attacker.get(&link(&page, "Create account")).await;
    attacker
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", email),
                ("given_name", "IT"),
                ("family_name", "Support"),
                ("password", attackers),
                ("password_confirm", attackers),
            ],
        )
        .await;
    smtp.wait_for(email).await;

    let mut owner = Browser::new();
    let page = start(&app, &mut owner, &p).await;
    let confirm = sign_up(&mut owner, &page, email, GOOD_PASSWORD).await;
    let code = smtp.wait_for_after(email, 1).await.code();
    let confirmed = owner
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &code)])
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    assert!(confirmed.body.contains("choose your password"), "{}", confirmed.body);
    // Nor does the account keep either sign-up's name.
    let account = app
        .state
        .accounts
        .get(
            &portcullis::ids::TenantId::parse(TENANT).unwrap(),
            &portcullis::ids::ConnectionId::parse(CONN).unwrap(),
            email,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((account.given_name, account.family_name), (None, None));
    // The first sign-up's password is kept but signs in to nothing until
    // the owner has chosen a new one; the second's was never stored.
    for (password, status, reason) in [
        (attackers, 403, "local.reset_required"),
        (GOOD_PASSWORD, 401, "local.bad_credentials"),
    ] {
        let page = start(&app, &mut attacker, &p).await;
        let refused = attacker
            .fill_and_submit(&page, None, &[("email", email), ("password", password)])
            .await;
        assert_reason(&refused, status, reason);
    }

    let reset_code = smtp.wait_for_after(email, 2).await.code();
    let mut browsers = (&mut owner, &mut attacker);
    owner_chooses_the_password(&app, &mut browsers, &confirmed, email, &reset_code, attackers).await;
}

/// The owner of `email`, on the reset page `confirmed` shows after the
/// confirmation, chooses a password with `reset_code`: then the other
/// sign-up's password (`attackers`) no longer signs in, and theirs does.
async fn owner_chooses_the_password(
    app: &TestApp,
    (owner, attacker): &mut (&mut Browser, &mut Browser),
    confirmed: &Page,
    email: &str,
    reset_code: &str,
    attackers: &str,
) {
    let p = pkce();
    let chosen = "Marigold-Canyon-77";
    let done = owner
        .fill_and_submit(
            confirmed,
            None,
            &[
                ("email", email),
                ("code", reset_code),
                ("password", chosen),
                ("password_confirm", chosen),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let page = start(app, attacker, &p).await;
    let refused = attacker
        .fill_and_submit(&page, None, &[("email", email), ("password", attackers)])
        .await;
    assert_reason(&refused, 401, "local.bad_credentials");
    let page = start(app, owner, &p).await;
    sign_in_from(owner, &page, email, chosen).await;
}

/// Account pre-hijacking: someone signs the owner's address up with their
/// own password in their own browser, and the owner, who gets the mail,
/// confirms it in theirs (without signing up themselves). The account is
/// confirmed as `RESET_REQUIRED`: the owner chooses the password by a
/// mailed code, and the pre-registered password never signs in. Confirmed
/// in the browser that signed it up, an account keeps its password.
#[tokio::test]
async fn local_an_account_confirmed_in_another_browser_than_its_sign_up_keeps_no_password() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "wren@acme.example";
    let attackers = "Juniper-Harbor-93";
    let p = pkce();
    let mut attacker = Browser::new();
    let page = start(&app, &mut attacker, &p).await;
    sign_up(&mut attacker, &page, email, attackers).await;
    let code = smtp.wait_for(email).await.code();

    // The owner follows the mail in their own browser.
    let mut owner = Browser::new();
    let page = start(&app, &mut owner, &p).await;
    let confirm = owner.get(&link(&page, "Confirm your email")).await;
    let confirmed = owner
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &code)])
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    assert!(confirmed.body.contains("choose your password"), "{}", confirmed.body);
    let page = start(&app, &mut attacker, &p).await;
    let refused = attacker
        .fill_and_submit(&page, None, &[("email", email), ("password", attackers)])
        .await;
    assert_reason(&refused, 403, "local.reset_required");

    let reset_code = smtp.wait_for_after(email, 1).await.code();
    let mut browsers = (&mut owner, &mut attacker);
    owner_chooses_the_password(&app, &mut browsers, &confirmed, email, &reset_code, attackers).await;

    // Signed up and confirmed in one browser: the password stays.
    let email = "ines@acme.example";
    let mut browser = Browser::new();
    let page = start(&app, &mut browser, &p).await;
    let confirm = sign_up(&mut browser, &page, email, GOOD_PASSWORD).await;
    let code = smtp.wait_for(email).await.code();
    let done = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &code)])
        .await;
    assert!(done.body.contains("You can sign in now"), "{}", done.body);
    let page = start(&app, &mut browser, &p).await;
    sign_in_from(&mut browser, &page, email, GOOD_PASSWORD).await;
}

/// Guesses sent together are checked one at a time, across replicas: the
/// lockout counts each failure before the next guess is checked, so a
/// burst gets no more checks than the lockout allows (the rest: 429).
#[tokio::test]
async fn local_guesses_sent_together_are_checked_one_at_a_time() {
    let smtp = SmtpServer::start();
    // The production hash: every check takes long enough for the burst to
    // arrive while the first is under way.
    let app = gateway_with(&smtp, None, false).await;
    setup(&app).await;
    let email = "otto@acme.example";
    create_account(&app, email, GOOD_PASSWORD).await;
    let p = pkce();
    // Twelve browsers at the form, then every guess sent at once (polled
    // together on this task: the browsers are not `Send`).
    let mut browsers = Vec::new();
    for _ in 0..12 {
        let mut browser = Browser::new();
        let page = start(&app, &mut browser, &p).await;
        browsers.push((browser, page));
    }
    let answers = all_at_once(
        browsers
            .iter_mut()
            .enumerate()
            .map(|(i, (browser, page))| {
                Box::pin(async move {
                    let guess = format!("Wrong-Guess-{i:03}");
                    browser
                        .fill_and_submit(page, None, &[("email", email), ("password", &guess)])
                        .await
                }) as Pending<'_>
            })
            .collect(),
    )
    .await;
    let checked = answers
        .iter()
        .filter(|a| a.body.contains("<code>local.bad_credentials</code>"))
        .count();
    let held = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!((1..=5).contains(&checked), "{checked} guesses checked of a burst of 12");
    assert_eq!(checked + held, 12);
}

#[tokio::test]
async fn local_wrong_codes_are_counted_and_the_sixth_attempt_voids_the_code() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "lin@acme.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let mut page = sign_up(&mut browser, &sign_in, email, GOOD_PASSWORD).await;
    let code = smtp.wait_for(email).await.code();
    let wrong = if code == "123456" { "654321" } else { "123456" };
    for _ in 0..5 {
        page = browser
            .fill_and_submit(&page, None, &[("email", email), ("code", wrong)])
            .await;
        assert_reason(&page, 400, "local.code_invalid");
    }
    // The sixth attempt is refused even with the right code, and voids it.
    page = browser
        .fill_and_submit(&page, None, &[("email", email), ("code", &code)])
        .await;
    assert_reason(&page, 429, "local.code_attempts_exceeded");
    assert!(page.headers.get("retry-after").is_none());

    // A new code works.
    let resend = browser.get(&link(&page, "Send a new code")).await;
    let confirm = browser.fill_and_submit(&resend, None, &[("email", email)]).await;
    let fresh = smtp.wait_for_after(email, 1).await.code();
    let done = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &fresh)])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("confirmed"), "{}", done.body);
}

/// A new code comes with fresh attempts, but the run of wrong codes does
/// not start again: after `WRONG_CODES_IN_A_ROW` wrong attempts across
/// codes, every code of that purpose is refused, the right one too
/// (`local.code_locked`), however the address is written; another
/// address is not affected.
#[tokio::test]
async fn local_wrong_codes_across_new_codes_lock_the_codes_of_the_address() {
    use portcullis::local::{CODE_MAX_ATTEMPTS, WRONG_CODES_IN_A_ROW};
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "lin@acme.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let mut page = sign_up(&mut browser, &sign_in, email, GOOD_PASSWORD).await;
    let codes = WRONG_CODES_IN_A_ROW / CODE_MAX_ATTEMPTS;
    for sent in 0..codes {
        let code = smtp.wait_for_after(email, sent as usize).await.code();
        let wrong = if code == "123456" { "654321" } else { "123456" };
        for _ in 0..CODE_MAX_ATTEMPTS {
            page = browser
                .fill_and_submit(&page, None, &[("email", email), ("code", wrong)])
                .await;
            assert_reason(&page, 400, "local.code_invalid");
        }
        // A new code, with fresh attempts of its own.
        let resend = browser.get(&link(&page, "Send a new code")).await;
        page = browser.fill_and_submit(&resend, None, &[("email", email)]).await;
    }
    let right = smtp.wait_for_after(email, codes as usize).await.code();
    for written in [email, "Lin@ACME.example"] {
        page = browser
            .fill_and_submit(&page, None, &[("email", written), ("code", &right)])
            .await;
        assert_reason(&page, 429, "local.code_locked");
    }

    // Another address's codes are its own.
    let other = "max@acme.example";
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let page = sign_up(&mut browser, &sign_in, other, GOOD_PASSWORD).await;
    let code = smtp.wait_for(other).await.code();
    let done = browser
        .fill_and_submit(&page, None, &[("email", other), ("code", &code)])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("confirmed"), "{}", done.body);
}

/// Answers while no code is outstanding guess nothing, so they lock no
/// one out: a stranger posting wrong reset codes for an address more than
/// `WRONG_CODES_IN_A_ROW` times is told `local.code_invalid` each time, and
/// the owner's reset with the code mailed next still works.
#[tokio::test]
async fn local_code_attempts_with_no_code_outstanding_lock_nobody_out() {
    use portcullis::local::WRONG_CODES_IN_A_ROW;
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "vera@acme.example";
    create_account(&app, email, GOOD_PASSWORD).await;
    let p = pkce();
    // A stranger reaches the reset form (through an address of their own)
    // and answers for the owner's address.
    let mut stranger = Browser::new();
    let sign_in = start(&app, &mut stranger, &p).await;
    let forgot = stranger.get(&link(&sign_in, "Forgot password?")).await;
    let mut page = stranger
        .fill_and_submit(&forgot, None, &[("email", "nobody@acme.example")])
        .await;
    let new_password = "Juniper-Harbor-58";
    for _ in 0..WRONG_CODES_IN_A_ROW + 5 {
        page = stranger
            .fill_and_submit(
                &page,
                None,
                &[
                    ("email", email),
                    ("code", "123456"),
                    ("password", new_password),
                    ("password_confirm", new_password),
                ],
            )
            .await;
        assert_reason(&page, 400, "local.code_invalid");
    }
    // The owner asks for a code, and it works.
    let mut owner = Browser::new();
    let sign_in = start(&app, &mut owner, &p).await;
    let forgot = owner.get(&link(&sign_in, "Forgot password?")).await;
    let reset = owner.fill_and_submit(&forgot, None, &[("email", email)]).await;
    let code = smtp.wait_for(email).await.code();
    let done = owner
        .fill_and_submit(
            &reset,
            None,
            &[
                ("email", email),
                ("code", &code),
                ("password", new_password),
                ("password_confirm", new_password),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let again = start(&app, &mut owner, &p).await;
    sign_in_from(&mut owner, &again, email, new_password).await;
}

#[tokio::test]
async fn local_breached_weak_and_mismatched_passwords_are_refused_with_their_reason() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    for (password, reason) in [
        ("password12345", "local.password_breached"),
        ("Baseball2024!", "local.password_breached"),
        ("short", "local.password_too_short"),
    ] {
        let page = sign_up(&mut browser, &sign_in, "kim@acme.example", password).await;
        assert_reason(&page, 400, reason);
        assert!(
            page.body.contains("aria-invalid=\"true\""),
            "the error is tied to the field"
        );
    }
    let form = browser.get(&link(&sign_in, "Create account")).await;
    let page = browser
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", "kim@acme.example"),
                ("password", GOOD_PASSWORD),
                ("password_confirm", "Tangerine-Orbit-43"),
            ],
        )
        .await;
    assert_reason(&page, 400, "local.password_mismatch");
    smtp.assert_none_after("kim@acme.example", 0, std::time::Duration::from_millis(200))
        .await;
}

/// A sign-up is kept (unconfirmed) whether or not anyone confirms it, so
/// a stranger's names are bounded before anything is stored: one over
/// 200 characters is refused (`local.name_too_long`, tied to its field),
/// no account is written and no code mailed.
#[tokio::test]
async fn local_a_sign_up_with_an_overlong_name_stores_nothing() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let email = "kim@acme.example";
    let (long, huge) = ("é".repeat(201), "x".repeat(10 * 1024));
    for (field, value) in [("given_name", long.as_str()), ("family_name", huge.as_str())] {
        // Each refused alone, whichever field it is.
        let form = browser.get(&link(&sign_in, "Create account")).await;
        let mut values = vec![
            ("email", email),
            ("password", GOOD_PASSWORD),
            ("password_confirm", GOOD_PASSWORD),
        ];
        values.push((field, value));
        let page = browser.fill_and_submit(&form, None, &values).await;
        assert_reason(&page, 400, "local.name_too_long");
        assert!(
            page.body.contains("aria-invalid=\"true\""),
            "the error is tied to the field"
        );
    }
    let stored = app
        .state
        .accounts
        .get(
            &portcullis::ids::TenantId::parse(TENANT).unwrap(),
            &portcullis::ids::ConnectionId::parse(CONN).unwrap(),
            email,
        )
        .await
        .unwrap();
    assert!(stored.is_none(), "nothing is stored for a refused sign-up");
    smtp.assert_none_after(email, 0, std::time::Duration::from_millis(200))
        .await;
    // 200 characters are a name.
    let form = browser.get(&link(&sign_in, "Create account")).await;
    let name = "é".repeat(200);
    let page = browser
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", email),
                ("given_name", name.as_str()),
                ("password", GOOD_PASSWORD),
                ("password_confirm", GOOD_PASSWORD),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

/// A gateway on a manual clock with open sign-up at the local
/// connection, for the tests of what unconfirmed accounts leave behind.
struct ClockedSignUps {
    smtp: SmtpServer,
    clock: portcullis::clock::ManualClock,
    app: TestApp,
    t: portcullis::ids::TenantId,
    c: portcullis::ids::ConnectionId,
    cfg: portcullis::local::LocalConfig,
}

impl ClockedSignUps {
    async fn start() -> Self {
        let smtp = SmtpServer::start();
        let clock = portcullis::clock::ManualClock::at(
            chrono::DateTime::parse_from_rfc3339("2031-05-01T10:00:00Z")
                .unwrap()
                .to_utc(),
        );
        let url = smtp.url();
        let app = spawn_app(AppOptions {
            clock: Some(clock.clone()),
            configure: Some(Arc::new(move |s| {
                s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
                s.local.argon2_memory_kib = 8192;
                s.local.argon2_iterations = 1;
            })),
            ..AppOptions::default()
        })
        .await;
        setup(&app).await;
        Self {
            smtp,
            clock,
            app,
            t: portcullis::ids::TenantId::parse(TENANT).unwrap(),
            c: portcullis::ids::ConnectionId::parse(CONN).unwrap(),
            cfg: portcullis::local::LocalConfig {
                allow_sign_up: true,
                ..Default::default()
            },
        }
    }

    async fn sign_up(&self, email: &str) {
        self.app
            .state
            .accounts
            .sign_up(
                &self.t,
                "Acme Corp",
                &self.c,
                &self.cfg,
                email,
                &portcullis::secret::Secret::new(GOOD_PASSWORD),
                Default::default(),
                None,
            )
            .await
            .unwrap();
    }
}

/// Sign-up is open to strangers, so the accounts nobody confirms expire:
/// an unconfirmed account is gone after `UNCONFIRMED_TTL` (and its address
/// can be signed up again), while a confirmed one and an admin's stay.
#[tokio::test]
async fn local_an_account_nobody_confirms_expires_and_a_confirmed_one_stays() {
    let w = ClockedSignUps::start().await;
    let (smtp, clock, app, t, c) = (&w.smtp, &w.clock, &w.app, &w.t, &w.c);
    let accounts = &app.state.accounts;
    let sign_up = |email: &'static str| w.sign_up(email);
    let (stranger, owner, admins) = ("una@acme.example", "val@acme.example", "wes@acme.example");
    sign_up(stranger).await;
    sign_up(owner).await;
    let code = smtp.wait_for(owner).await.code();
    let confirmed = accounts.confirm(t, c, owner, &code, None).await.unwrap();
    assert_ne!(confirmed.status, portcullis::local::AccountStatus::Unconfirmed);
    create_account(app, admins, GOOD_PASSWORD).await;
    smtp.wait_for(stranger).await;
    let (tr, cr) = (t, c);
    let kept = |email: &'static str| async move { accounts.get(tr, cr, email).await.unwrap().is_some() };
    let ttl = chrono::Duration::from_std(portcullis::local::UNCONFIRMED_TTL).unwrap();
    clock.advance(ttl - chrono::Duration::minutes(1));
    assert!(kept(stranger).await, "kept for its whole TTL");
    clock.advance(chrono::Duration::minutes(2));
    assert!(!kept(stranger).await, "an account nobody confirmed expired");
    assert!(kept(owner).await, "a confirmed account stays");
    assert!(kept(admins).await, "an admin's account stays");
    let listed: Vec<String> = accounts
        .list(t, c)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.email)
        .collect();
    assert_eq!(listed, vec![owner.to_owned(), admins.to_owned()]);
    sign_up(stranger).await;
    assert!(kept(stranger).await, "the address can be signed up again");
}

/// An unconfirmed account expires but its member of the connection's
/// index would stay: every new account sweeps a few members at random
/// and drops those whose account is gone, so strangers' sign-ups cannot
/// grow the index without bound. The sweep never drops a member whose
/// account is there.
#[tokio::test]
async fn local_members_of_expired_accounts_are_swept_from_the_index_by_later_sign_ups() {
    let w = ClockedSignUps::start().await;
    let (smtp, clock, t, c) = (&w.smtp, &w.clock, &w.t, &w.c);
    let (accounts, store) = (&w.app.state.accounts, &w.app.state.store);
    let index = portcullis::local::index_key(t, c);
    let sign_up = |email: &'static str| w.sign_up(email);
    sign_up("una@acme.example").await;
    smtp.wait_for("una@acme.example").await;
    let ttl = chrono::Duration::from_std(portcullis::local::UNCONFIRMED_TTL).unwrap();
    clock.advance(ttl + chrono::Duration::minutes(1));
    assert_eq!(
        store.set_members(&index).await.unwrap().len(),
        1,
        "the member outlives its account"
    );
    // The next sign-up's sweep (after its answer, with its code) looks at
    // both members (two at most): the gone account's is dropped, its own
    // kept.
    sign_up("val@acme.example").await;
    smtp.wait_for("val@acme.example").await;
    let mut members = store.set_members(&index).await.unwrap();
    for _ in 0..100 {
        if members.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        members = store.set_members(&index).await.unwrap();
    }
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(accounts.get(t, c, "val@acme.example").await.unwrap().is_some());
    assert_eq!(
        accounts.list(t, c).await.unwrap().len(),
        1,
        "the account swept beside is listed"
    );
    // Many gone members among a few live ones: the sweeps drop gone ones
    // only, and soon nearly all of them.
    let live: Vec<String> = store.set_members(&index).await.unwrap();
    for i in 0..100 {
        store.set_add(&index, &format!("gone{i:03}"), None).await.unwrap();
    }
    let mut dropped = 0;
    for _ in 0..400 {
        dropped += accounts.sweep_index(t, c).await.unwrap();
    }
    let left = store.set_members(&index).await.unwrap();
    for m in &live {
        assert!(left.contains(m), "a live account's member is never dropped");
    }
    // Each of the 400 sweeps looks at 2 of at most 101 members: a given
    // gone member escapes all of them with a chance under 4e-4.
    assert!(left.len() <= live.len() + 5, "{} members left", left.len());
    assert_eq!(dropped, 100 + live.len() - left.len());
}

#[tokio::test]
async fn local_forms_without_their_csrf_token_are_refused() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let mut form = sign_in.form(None);
    form.set("email", "x@acme.example");
    form.set("password", GOOD_PASSWORD);
    form.set("csrf", "");
    let page = browser.submit(&sign_in, &form).await;
    assert_reason(&page, 403, "local.csrf_missing");
    let mut form = page.form(None);
    form.set("csrf", "forged-token");
    let page2 = browser.submit(&page, &form).await;
    assert_reason(&page2, 403, "local.csrf_mismatch");
}

#[tokio::test]
async fn local_lockout_counts_across_two_replicas_over_redis() {
    let smtp = SmtpServer::start();
    let shared = (redis::url(), redis::prefix());
    let a = gateway(&smtp, Some(shared.clone())).await;
    let b = gateway(&smtp, Some(shared)).await;
    setup(&a).await;
    let email = "max@acme.example";
    create_account(&a, email, GOOD_PASSWORD).await;
    let p = pkce();
    let mut on_a = Browser::new();
    let sign_in_a = start(&a, &mut on_a, &p).await;
    let path_and_query = format!("{}?{}", sign_in_a.url.path(), sign_in_a.url.query().unwrap());
    let sign_in_b = b.url(&path_and_query);
    let mut on_b = Browser::new();
    // Five failures, alternating between the replicas.
    for i in 0..5 {
        let (browser, url) = if i % 2 == 0 {
            (&mut on_a, sign_in_a.url.clone())
        } else {
            (&mut on_b, sign_in_b.clone())
        };
        let page = browser.get(&url).await;
        let answer = browser
            .fill_and_submit(&page, None, &[("email", email), ("password", "Wrong-Password-99")])
            .await;
        assert_reason(&answer, 401, "local.bad_credentials");
    }
    // Now locked on both replicas, even with the right password.
    for (browser, url) in [(&mut on_b, sign_in_b.clone()), (&mut on_a, sign_in_a.url.clone())] {
        let page = browser.get(&url).await;
        let answer = browser
            .fill_and_submit(&page, None, &[("email", email), ("password", GOOD_PASSWORD)])
            .await;
        assert_reason(&answer, 429, "local.locked");
        let retry: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
    }
    // An unknown address locks the same way (no enumeration by lockout).
    for _ in 0..5 {
        let page = on_a.get(&sign_in_a.url).await;
        let answer = on_a
            .fill_and_submit(
                &page,
                None,
                &[("email", "ghost@acme.example"), ("password", "Wrong-Password-99")],
            )
            .await;
        assert_reason(&answer, 401, "local.bad_credentials");
    }
    let page = on_b.get(&sign_in_b).await;
    let answer = on_b
        .fill_and_submit(
            &page,
            None,
            &[("email", "ghost@acme.example"), ("password", "Wrong-Password-99")],
        )
        .await;
    assert_reason(&answer, 429, "local.locked");
}

#[tokio::test]
async fn local_forgot_password_resets_by_code_and_the_old_password_stops_working() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let email = "rosa@acme.example";
    create_account(&app, email, GOOD_PASSWORD).await;
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    // Signed in once: the browser has an SSO session for the tenant.
    sign_in_from(&mut browser, &sign_in, email, GOOD_PASSWORD).await;
    browser.get_until(&authorize_url(&app, &p), &at_app).await.stopped();

    let forgot = browser.get(&link(&sign_in, "Forgot password?")).await;
    let reset = browser.fill_and_submit(&forgot, None, &[("email", email)]).await;
    let mail = smtp.wait_for(email).await;
    assert!(mail.subject.contains("reset"), "{}", mail.subject);
    let code = mail.code();
    let new_password = "Marigold-Canyon-77";
    let breached = browser
        .fill_and_submit(
            &reset,
            None,
            &[
                ("email", email),
                ("code", &code),
                ("password", "password1234"),
                ("password_confirm", "password1234"),
            ],
        )
        .await;
    assert_reason(&breached, 400, "local.password_breached");
    let done = browser
        .fill_and_submit(
            &breached,
            None,
            &[
                ("email", email),
                ("code", &code),
                ("password", new_password),
                ("password_confirm", new_password),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let old = browser
        .fill_and_submit(&done, None, &[("email", email), ("password", GOOD_PASSWORD)])
        .await;
    assert_reason(&old, 401, "local.bad_credentials");
    // The reset ended the SSO session: the next sign-in asks for the password.
    let again = start(&app, &mut browser, &p).await;
    sign_in_from(&mut browser, &again, email, new_password).await;
}

#[tokio::test]
async fn local_users_admin_api_creates_disables_force_resets_deletes_and_is_backed_up() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let base = format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users");
    let post = |path: String, body: Option<Value>| {
        let app = app.clone();
        async move { app.admin(reqwest::Method::POST, &path, body).await }
    };
    let (status, user) = post(
        base.clone(),
        Some(json!({"email": "Ops@Acme.Example", "password": GOOD_PASSWORD, "given_name": "Op"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "ops@acme.example");
    assert_eq!(user["status"], "CONFIRMED");
    assert!(user.get("password_hash").is_none(), "{user}");
    let (status, dup) = post(base.clone(), Some(json!({"email": "ops@acme.example"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    let (status, weak) = post(
        base.clone(),
        Some(json!({"email": "x@acme.example", "password": "password2024"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{weak}");
    assert!(weak.to_string().contains("local.password_breached"), "{weak}");
    let (status, _) = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{TENANT}/connections/nope/users"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without a password: the person must reset it first.
    let (status, invited) = post(base.clone(), Some(json!({"email": "new@acme.example"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{invited}");
    assert_eq!(invited["status"], "RESET_REQUIRED");

    let (_, list) = app.admin(reqwest::Method::GET, &base, None).await;
    assert_eq!(list["users"].as_array().unwrap().len(), 2, "{list}");

    let t = portcullis::ids::TenantId::parse(TENANT).unwrap();
    let c = portcullis::ids::ConnectionId::parse(CONN).unwrap();
    let pw = portcullis::secret::Secret::new(GOOD_PASSWORD);
    let reason = |r: Result<portcullis::local::SignedIn, portcullis::local::LocalError>| match r {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    };
    assert_eq!(
        reason(app.state.accounts.authenticate(&t, &c, "ops@acme.example", &pw).await),
        "ok"
    );

    let one = format!("{base}/ops%40acme.example");
    let (status, disabled) = post(format!("{one}/disable"), None).await;
    assert_eq!(status, StatusCode::OK, "{disabled}");
    assert_eq!(disabled["status"], "DISABLED");
    assert_eq!(
        reason(app.state.accounts.authenticate(&t, &c, "ops@acme.example", &pw).await),
        "local.disabled"
    );
    let (_, enabled) = post(format!("{one}/enable"), None).await;
    assert_eq!(enabled["status"], "CONFIRMED");
    let (_, reset) = post(format!("{one}/force-reset"), None).await;
    assert_eq!(reset["status"], "RESET_REQUIRED");
    assert_eq!(
        reason(app.state.accounts.authenticate(&t, &c, "ops@acme.example", &pw).await),
        "local.reset_required"
    );

    // The accounts are in a backup.
    let backup = portcullis::backup::export(&app.state.store, app.state.provider.clock.now())
        .await
        .unwrap();
    let names: Vec<&str> = backup.records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("user:pw:")).count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"users:pw"), "{names:?}");

    // Every change is in the tenant's audit log.
    let (_, audit) = app
        .admin(reqwest::Method::GET, &format!("/admin/v1/tenants/{TENANT}/audit"), None)
        .await;
    for action in [
        "local_user.created",
        "local_user.disabled",
        "local_user.enabled",
        "local_user.force_reset",
    ] {
        assert!(audit.to_string().contains(action), "{action} not audited: {audit}");
    }

    let (status, _) = app.admin(reqwest::Method::DELETE, &one, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.admin(reqwest::Method::GET, &one, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        reason(app.state.accounts.authenticate(&t, &c, "ops@acme.example", &pw).await),
        "local.bad_credentials"
    );
    // Deleting the connection deletes its accounts.
    let (status, _) = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(app.state.accounts.list(&t, &c).await.unwrap().is_empty());
}

/// Signs `email` in through the local sign-in page; the token response.
async fn sign_in_tokens(app: &TestApp, email: &str) -> Value {
    let p = pkce();
    let mut browser = Browser::new();
    let page = start(app, &mut browser, &p).await;
    let back = sign_in_from(&mut browser, &page, email, GOOD_PASSWORD).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    redeem(app, q.get("code").unwrap(), &p).await
}

/// A gateway with the local connection and an account for `email` made
/// through the admin API, signed in once: the gateway, the accounts' admin
/// path, and the access token with its `sub`.
async fn signed_in_account(smtp: &SmtpServer, email: &str) -> (TestApp, String, String, String) {
    let app = gateway(smtp, None).await;
    setup(&app).await;
    let base = format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users");
    let (status, user) = app
        .admin(
            reqwest::Method::POST,
            &base,
            Some(json!({"email": email, "password": GOOD_PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let tokens = sign_in_tokens(&app, email).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let sub = app.state.provider.check_access_token(&access).await.unwrap().sub;
    (app, base, access, sub)
}

/// Disabling a local account refuses the access tokens it already has (and
/// enabling accepts them again); deleting it removes its directory user
/// (tokens, userinfo refused) and its MFA enrolment.
#[tokio::test]
async fn local_account_disable_and_delete_reach_issued_tokens_and_the_mfa_enrolment() {
    use portcullis::mfa::{totp, Mfa};
    let smtp = SmtpServer::start();
    let (app, base, access, sub) = signed_in_account(&smtp, "ada@acme.example").await;
    let (access, provider) = (access.as_str(), &app.state.provider);
    provider.userinfo(access).await.unwrap();

    // An MFA enrolment for the user.
    let t = portcullis::ids::TenantId::parse(TENANT).unwrap();
    let mfa = Mfa::new(app.state.store.clone(), provider.clock.clone());
    let pending = mfa.start_enrolment(&t, &sub, "flow").await.unwrap();
    let key = totp::base32_decode(&pending.secret).unwrap();
    let step = totp::step_of(provider.clock.unix()).unwrap();
    let code = totp::code_at(totp::Algorithm::Sha1, &key, step, 6).unwrap();
    mfa.confirm(&t, &sub, "flow", portcullis::mfa::AddedFrom::Session, &code)
        .await
        .unwrap();
    assert!(mfa.enrolled(&t, &sub).await.unwrap());

    let one = format!("{base}/ada%40acme.example");
    let (status, _) = app.admin(reqwest::Method::POST, &format!("{one}/disable"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        provider.check_access_token(access).await.unwrap_err().reason,
        "token.user_disabled"
    );
    assert_eq!(
        provider.userinfo(access).await.unwrap_err().reason,
        "token.user_disabled"
    );
    let (status, _) = app.admin(reqwest::Method::POST, &format!("{one}/enable"), None).await;
    assert_eq!(status, StatusCode::OK);
    provider.check_access_token(access).await.unwrap();

    let (status, _) = app.admin(reqwest::Method::DELETE, &one, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        provider.check_access_token(access).await.unwrap_err().reason,
        "token.user_gone"
    );
    assert_eq!(provider.userinfo(access).await.unwrap_err().reason, "token.user_gone");
    assert!(provider.directory.get(&t, &sub).await.unwrap().is_none());
    assert!(
        !mfa.enrolled(&t, &sub).await.unwrap(),
        "the enrolment went with the account"
    );
}

/// A responder's disable of the user holds whatever is done to its local
/// account: enabling the account (never disabled, or disabled and enabled
/// again) lifts only a disable the account's own disable set, and the
/// user's tokens stay refused until the user is enabled.
#[tokio::test]
async fn enabling_a_local_account_keeps_a_directory_disable() {
    let smtp = SmtpServer::start();
    let (app, base, access, sub) = signed_in_account(&smtp, "ines@acme.example").await;
    let (access, provider) = (access.as_str(), &app.state.provider);
    let refused = || async {
        provider
            .check_access_token(access)
            .await
            .map(|_| ())
            .map_err(|e| e.reason)
    };
    let app = &app;
    let post = |path: String| async move {
        let (status, answer) = app.admin(reqwest::Method::POST, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    };
    let account = format!("{base}/ines%40acme.example");
    let user = format!("/admin/v1/tenants/{TENANT}/users/{sub}");

    post(format!("{user}/disable")).await;
    assert_eq!(refused().await, Err("token.user_disabled"));
    post(format!("{account}/enable")).await;
    assert_eq!(
        refused().await,
        Err("token.user_disabled"),
        "the account's enable lifted the user's disable"
    );
    post(format!("{account}/disable")).await;
    post(format!("{account}/enable")).await;
    assert_eq!(
        refused().await,
        Err("token.user_disabled"),
        "the account's enable lifted the user's disable"
    );
    post(format!("{user}/enable")).await;
    assert_eq!(refused().await, Ok(()));
    // The account's own disable is lifted by the account's enable.
    post(format!("{account}/disable")).await;
    assert_eq!(refused().await, Err("token.user_disabled"));
    post(format!("{account}/enable")).await;
    assert_eq!(refused().await, Ok(()));
}

/// `/forgot` and `/resend` answer after the same store reads for every
/// address: the code's own store work (its mail limit, its attempts reset,
/// the code) comes after the answer. It used to come before, so a known
/// address answered three round trips later than an unknown one, which
/// timing could tell. Shown without timing: while Redis holds every write
/// (`CLIENT PAUSE … WRITE`), a known address's request still answers, and
/// no code is stored yet; once writes resume, the code is stored and mailed.
#[tokio::test]
async fn local_forgot_and_resend_answer_before_their_code_is_stored() {
    let smtp = SmtpServer::start();
    let server = redis::RedisServer::start();
    let app = gateway(&smtp, Some((server.url(), redis::prefix()))).await;
    setup(&app).await;
    let t = portcullis::ids::TenantId::parse(TENANT).unwrap();
    let c = portcullis::ids::ConnectionId::parse(CONN).unwrap();
    let cfg = portcullis::local::LocalConfig {
        allow_sign_up: true,
        ..Default::default()
    };
    let accounts = &app.state.accounts;
    let confirmed = "ren@acme.example";
    create_account(&app, confirmed, GOOD_PASSWORD).await;
    let waiting = "sol@acme.example";
    accounts
        .sign_up(
            &t,
            "Acme Corp",
            &c,
            &cfg,
            waiting,
            &portcullis::secret::Secret::new(GOOD_PASSWORD),
            Default::default(),
            None,
        )
        .await
        .unwrap();
    smtp.wait_for(waiting).await;
    let port = server.port().to_string();
    let codes = |purpose: &str| redis::cli(&["-p", &port, "--scan", "--pattern", &format!("*code:{purpose}:*")]);
    assert!(codes("reset").trim().is_empty());

    let held = |what: &str| {
        let paused = redis::cli(&["-p", &port, "CLIENT", "PAUSE", "20000", "WRITE"]);
        assert_eq!(paused.trim(), "OK", "{what}: {paused}");
    };
    held("forgot");
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        accounts.forgot(&t, "Acme Corp", &c, &cfg, confirmed),
    )
    .await;
    let stored_meanwhile = codes("reset");
    redis::cli(&["-p", &port, "CLIENT", "UNPAUSE"]);
    answered
        .expect("forgot waited for the held writes")
        .expect("forgot answered with an error: its code's writes were awaited");
    assert!(
        stored_meanwhile.trim().is_empty(),
        "stored before the answer: {stored_meanwhile}"
    );
    let mail = smtp.wait_for(confirmed).await;
    assert_eq!(mail.code().len(), 6);
    assert_eq!(
        codes("reset").lines().count(),
        1,
        "the reset code is stored once writes resume"
    );

    let verify_codes = codes("verify");
    held("resend");
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        accounts.resend(&t, "Acme Corp", &c, &cfg, waiting),
    )
    .await;
    redis::cli(&["-p", &port, "CLIENT", "UNPAUSE"]);
    answered
        .expect("resend waited for the held writes")
        .expect("resend answered with an error: its code's writes were awaited");
    smtp.wait_for_after(waiting, 1).await;
    assert_eq!(codes("verify"), verify_codes, "the same account's code, replaced");
}

/// Accounts are bound to their tenant's and connection's incarnations. A
/// deletion whose purge failed left its accounts in the store, and a tenant
/// created again under the same ids (maybe for another customer) found
/// them: their passwords signed in. Now such a leftover is not seen (no
/// sign-in, not listed), and a sign-up of its address replaces it.
#[tokio::test]
async fn local_accounts_left_by_a_deleted_tenant_are_not_its_successors() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let t = portcullis::ids::TenantId::parse(TENANT).unwrap();
    let c = portcullis::ids::ConnectionId::parse(CONN).unwrap();
    let email = "old@acme.example";
    let old_password = "Juniper-Harbor-93";
    create_account(&app, email, old_password).await;
    let key = portcullis::local::user_key(&t, &c, email);
    let leftover = app.state.store.get(&key).await.unwrap().expect("the account's record");
    assert!(String::from_utf8_lossy(&leftover).contains("\"incarnation\""));
    // And one from before accounts were bound (no incarnation), made an
    // hour before the tenant that follows.
    let legacy_email = "legacy@acme.example";
    create_account(&app, legacy_email, old_password).await;
    let legacy_key = portcullis::local::user_key(&t, &c, legacy_email);
    let mut legacy: Value = serde_json::from_slice(&app.state.store.get(&legacy_key).await.unwrap().unwrap()).unwrap();
    legacy.as_object_mut().unwrap().remove("incarnation");
    legacy["created_at"] = json!(legacy["created_at"].as_i64().unwrap() - 3600);
    let legacy = serde_json::to_vec(&legacy).unwrap();

    // The tenant is deleted; its purge "fails" (the record is put back as
    // it would have stayed), and a tenant of the same ids is created.
    let (status, _) = app
        .admin(reqwest::Method::DELETE, &format!("/admin/v1/tenants/{TENANT}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.state.store.put(&key, &leftover, None).await.unwrap();
    app.state.store.put(&legacy_key, &legacy, None).await.unwrap();
    create_tenant_and_connection(&app, "Another Corp").await;

    // The leftover's password signs in to nothing, and it is not listed.
    let p = pkce();
    let mut browser = Browser::new();
    let page = start(&app, &mut browser, &p).await;
    let refused = browser
        .fill_and_submit(&page, None, &[("email", email), ("password", old_password)])
        .await;
    assert_reason(&refused, 401, "local.bad_credentials");
    let page = start(&app, &mut browser, &p).await;
    let refused = browser
        .fill_and_submit(&page, None, &[("email", legacy_email), ("password", old_password)])
        .await;
    assert_reason(&refused, 401, "local.bad_credentials");
    assert!(app.state.accounts.list(&t, &c).await.unwrap().is_empty());
    assert!(app.state.accounts.get(&t, &c, email).await.unwrap().is_none());
    assert!(app.state.accounts.get(&t, &c, legacy_email).await.unwrap().is_none());

    // Its address signs up afresh (the leftover is replaced) and signs in.
    let confirm = sign_up(&mut browser, &page, email, GOOD_PASSWORD).await;
    let code = smtp.wait_for(email).await.code();
    let confirmed = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", &code)])
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let page = start(&app, &mut browser, &p).await;
    sign_in_from(&mut browser, &page, email, GOOD_PASSWORD).await;
    assert_eq!(app.state.accounts.list(&t, &c).await.unwrap().len(), 1);
}

/// A password check whose request is abandoned while the hash runs (its
/// client gone) counts as a failure and does not keep the account held:
/// before, such a check left the hold for ten seconds and counted nothing,
/// so repeating it kept the owner on `local.busy` for as long as anyone
/// liked, without ever reaching the lockout.
#[tokio::test]
async fn an_abandoned_password_check_counts_as_a_failure_and_releases_the_account() {
    use crate::support::logs::Captured;
    use sha2::Digest;
    let (logs, _capture) = Captured::start();
    let smtp = SmtpServer::start();
    let url = smtp.url();
    // The shipped argon2 parameters, so that a check takes long enough to
    // be abandoned; a lockout far away.
    let app = spawn_app(AppOptions {
        configure: Some(Arc::new(move |s| {
            s.mail.smtp_url = Some(portcullis::secret::Secret::new(url.clone()));
            s.mail.from = Some("Acme sign-in <signin@acme.example>".into());
            s.local.lockout_threshold = 100;
        })),
        ..AppOptions::default()
    })
    .await;
    setup(&app).await;
    let email = "noor@acme.example";
    create_account(&app, email, GOOD_PASSWORD).await;

    // Abandon wrong-password checks, waiting a little longer each time,
    // until one was abandoned while it held the account.
    let mut abandoned = false;
    for wait_ms in [2, 5, 10, 20, 40, 80, 160] {
        let mut attacker = Browser::new();
        let page = start(&app, &mut attacker, &pkce()).await;
        let mut form = page.form(None);
        form.set("email", email);
        form.set("password", "Not-The-Password-7");
        let action = page.url.join(&form.action).unwrap();
        let sent = attacker.send(reqwest::Method::POST, &action, Some(&form.fields), Some(&page.url));
        let _ = tokio::time::timeout(std::time::Duration::from_millis(wait_ms), sent).await;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if !logs.with_reason("local.check_cancelled").is_empty() {
                break;
            }
        }
        if !logs.with_reason("local.check_cancelled").is_empty() {
            abandoned = true;
            break;
        }
    }
    assert!(abandoned, "no check was abandoned while it ran: {}", logs.text());

    // Every wrong check counted, the abandoned ones too.
    let finished = logs.with_reason("local.bad_credentials").len();
    let cancelled = logs.with_reason("local.check_cancelled").len();
    let id = hex::encode(sha2::Sha256::digest(email.as_bytes()));
    let fails = portcullis::store::Key::tenant(TENANT, "local", format!("fails:{CONN}:{id}"));
    let counted = app.state.store.get(&fails).await.unwrap().expect("failures counted");
    assert_eq!(
        String::from_utf8(counted).unwrap(),
        (finished + cancelled).to_string(),
        "{finished} finished and {cancelled} abandoned wrong checks"
    );

    // The owner is not kept waiting: the account is not held.
    let p = pkce();
    let mut owner = Browser::new();
    let page = start(&app, &mut owner, &p).await;
    let back = sign_in_from(&mut owner, &page, email, GOOD_PASSWORD).await;
    assert!(back.query_pairs().any(|(k, _)| k == "code"), "{back}");
}

/// A sign-in stopped at its ticket: the password was right and the 303 to
/// `/local/{t}/{c}/callback?state&ticket` was not followed. Answers the
/// callback's URL.
async fn ticket_not_followed(
    app: &TestApp,
    world: crate::support::local::World,
    browser: &mut Browser,
    email: &str,
) -> Url {
    let p = pkce();
    let page = world.start(app, browser, &p).await;
    let mut form = page.form(None);
    form.set("email", email);
    form.set("password", GOOD_PASSWORD);
    let callback = format!("/local/{}/{}/callback", world.tenant, world.connection);
    let stopped = browser
        .submit_until(&page, &form, &|u: &Url| u.path() == callback)
        .await
        .stopped();
    assert!(stopped.query_pairs().any(|(k, _)| k == "ticket"), "{stopped}");
    stopped
}

/// Follows a ticket of an account changed meanwhile: a page with
/// `local.account_changed`, no code for the app, and no directory user.
async fn ticket_signs_nobody_in(app: &TestApp, browser: &mut Browser, callback: &Url) {
    let refused = browser.get(callback).await;
    assert_reason(&refused, 400, "local.account_changed");
    assert!(
        browser.history.iter().all(|h| !h.url.as_str().starts_with(REDIRECT)),
        "the app got an answer: {}",
        browser.trail()
    );
    let (status, users) = app
        .admin(reqwest::Method::GET, &format!("/admin/v1/tenants/{TENANT}/users"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(users["users"], json!([]), "{users}");
}

/// A local sign-in's ticket carries the account it was issued for: an
/// account deleted by an admin between the password check and the
/// callback (no directory user yet, so nothing was revoked) signs nobody
/// in (`local.account_changed`): no user is provisioned for it, no session
/// opens, no code is issued.
#[tokio::test]
async fn a_ticket_of_a_deleted_local_account_signs_nobody_in() {
    let app = crate::support::local::Gateway::default().spawn().await;
    let world = crate::support::local::World {
        tenant: TENANT,
        connection: CONN,
        client: CLIENT,
        scope: "openid email",
    }
    .create(&app, "Acme Corp", "acme.example")
    .await;
    let email = "ada@acme.example";
    world.account(&app, email, GOOD_PASSWORD).await;
    let mut browser = Browser::new();
    let callback = ticket_not_followed(&app, world, &mut browser, email).await;

    let (status, body) = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users/ada%40acme.example"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    ticket_signs_nobody_in(&app, &mut browser, &callback).await;

    // An account of the same email created again is another account: the
    // old ticket is not its sign-in either.
    world.account(&app, email, GOOD_PASSWORD).await;
    let mut browser = Browser::new();
    let callback = ticket_not_followed(&app, world, &mut browser, email).await;
    app.admin(
        reqwest::Method::DELETE,
        &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users/ada%40acme.example"),
        None,
    )
    .await;
    world.account(&app, email, GOOD_PASSWORD).await;
    ticket_signs_nobody_in(&app, &mut browser, &callback).await;
}

/// The same for an account disabled, or force-reset, by an admin before
/// its first sign-in finished (no directory user to disable or revoke
/// yet): the ticket signs nobody in (`local.account_changed`).
#[tokio::test]
async fn a_ticket_of_a_local_account_disabled_or_force_reset_before_its_first_sign_in_signs_nobody_in() {
    let app = crate::support::local::Gateway::default().spawn().await;
    let world = crate::support::local::World {
        tenant: TENANT,
        connection: CONN,
        client: CLIENT,
        scope: "openid email",
    }
    .create(&app, "Acme Corp", "acme.example")
    .await;
    for (email, change) in [("ada@acme.example", "disable"), ("bo@acme.example", "force-reset")] {
        world.account(&app, email, GOOD_PASSWORD).await;
        let mut browser = Browser::new();
        let callback = ticket_not_followed(&app, world, &mut browser, email).await;
        let (status, body) = app
            .admin(
                reqwest::Method::POST,
                &format!(
                    "/admin/v1/tenants/{TENANT}/connections/{CONN}/users/{}/{change}",
                    email.replace('@', "%40")
                ),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ticket_signs_nobody_in(&app, &mut browser, &callback).await;
    }
}

/// The tenant and connection ids of the local-account world.
fn ids() -> (portcullis::ids::TenantId, portcullis::ids::ConnectionId) {
    (
        portcullis::ids::TenantId::parse(TENANT).unwrap(),
        portcullis::ids::ConnectionId::parse(CONN).unwrap(),
    )
}

/// The addresses of the connection's accounts, as stored.
async fn stored_addresses(app: &TestApp) -> Vec<String> {
    let (t, c) = ids();
    let users = app.state.accounts.list(&t, &c).await.unwrap();
    users.into_iter().map(|u| u.email).collect()
}

/// Waits (up to 5 s) for a log line with `reason`; how many there are.
async fn logged(logs: &crate::support::logs::Captured, reason: &str) -> usize {
    for _ in 0..100 {
        let n = logs.with_reason(reason).len();
        if n > 0 {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    0
}

/// An address with a precomposed é (NFC), the same with e and a combining
/// acute accent (NFD), and the same again in full-width capitals.
const NFC: &str = "jos\u{e9}@acme.example";
const NFD: &str = "jose\u{301}@acme.example";
const WIDE: &str = "\u{ff2a}\u{ff2f}\u{ff33}\u{c9}@acme.example";

/// A sign-up with another spelling of an address that has an account is
/// answered as a sign-up of a taken address (`local.sign_up_existing`) and
/// makes no second account: the canonically equivalent (NFD) and the
/// full-width spellings are the address the account was made with (NFC).
#[tokio::test]
async fn local_a_sign_up_with_another_spelling_of_a_taken_address_makes_no_second_account() {
    use crate::support::logs::Captured;
    let (logs, _capture) = Captured::start();
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    create_account(&app, NFC, GOOD_PASSWORD).await;
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    for (i, spelling) in [NFD, WIDE].into_iter().enumerate() {
        let confirm = sign_up(&mut browser, &sign_in, spelling, "Attackers-Own-Pass-1").await;
        assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
        assert!(confirm.body.contains("Confirm your email"), "{}", confirm.body);
        assert!(logged(&logs, "local.sign_up_existing").await > i, "{}", logs.text());
        assert_eq!(
            logs.with_reason("local.sign_up_existing").len(),
            i + 1,
            "{}",
            logs.text()
        );
    }
    assert!(logs.with_reason("local.signed_up").is_empty(), "{}", logs.text());
    assert_eq!(stored_addresses(&app).await, [NFC]);
    // The owner still signs in, with any spelling.
    let page = browser.get(&sign_in.url).await;
    sign_in_from(&mut browser, &page, WIDE, GOOD_PASSWORD).await;
}

/// Failed sign-ins under two spellings of one address count against the
/// account's one lockout: three with the NFC spelling and two with the NFD
/// one lock it for both (`local.locked`), the right password too.
#[tokio::test]
async fn local_failed_sign_ins_under_two_spellings_count_against_one_lockout() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    create_account(&app, NFC, GOOD_PASSWORD).await;
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    for i in 0..5 {
        let spelling = if i % 2 == 0 { NFC } else { NFD };
        let page = browser.get(&sign_in.url).await;
        let answer = browser
            .fill_and_submit(&page, None, &[("email", spelling), ("password", "Wrong-Password-99")])
            .await;
        assert_reason(&answer, 401, "local.bad_credentials");
    }
    for spelling in [NFC, NFD, WIDE] {
        let page = browser.get(&sign_in.url).await;
        let mut form = page.form(None);
        form.set("email", spelling);
        form.set("password", GOOD_PASSWORD);
        match browser.submit_until(&page, &form, &at_app).await {
            Nav::Page(answer) => assert_reason(&answer, 429, "local.locked"),
            Nav::Stopped(url) => panic!("{spelling:?} signed in, not locked: {url}"),
        }
    }
}

/// An account signed up with a Unicode domain is stored, mailed and
/// signed in to under the domain's A-label: its code goes to the A-label
/// address, it signs in with the A-label written in capitals, and the app
/// gets the address in that one spelling.
#[tokio::test]
async fn local_an_account_signed_up_with_a_unicode_domain_signs_in_with_its_a_label() {
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let unicode = "Jo@B\u{fc}cher.example";
    let a_label = "jo@xn--bcher-kva.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let confirm = sign_up(&mut browser, &sign_in, unicode, GOOD_PASSWORD).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    let code = smtp.wait_for(a_label).await.code();
    let confirmed = browser
        .fill_and_submit(&confirm, None, &[("email", unicode), ("code", &code)])
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    assert!(confirmed.body.contains("confirmed"), "{}", confirmed.body);
    assert_eq!(stored_addresses(&app).await, [a_label]);

    let page = browser.get(&sign_in.url).await;
    let back = sign_in_from(&mut browser, &page, "JO@XN--BCHER-KVA.EXAMPLE", GOOD_PASSWORD).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    let tokens = redeem(&app, q.get("code").unwrap(), &p).await;
    let claims: Value = app
        .state
        .provider
        .keys
        .verify(tokens["id_token"].as_str().unwrap(), "JWT", &app.state.provider.iss())
        .await
        .unwrap();
    assert_eq!(claims["email"], a_label, "{claims}");
}

/// Moves the account stored under `from` to the key of `to`, as an
/// account made before addresses had one spelling was stored.
async fn store_under(app: &TestApp, from: &str, to: &str) {
    use sha2::Digest;
    let (t, c) = ids();
    let store = &app.state.store;
    let now = portcullis::local::user_key(&t, &c, from);
    let mut record: Value = serde_json::from_slice(&store.get(&now).await.unwrap().unwrap()).unwrap();
    record["email"] = json!(to);
    let earlier = portcullis::local::user_key(&t, &c, to);
    store
        .put(&earlier, &serde_json::to_vec(&record).unwrap(), None)
        .await
        .unwrap();
    store.delete(&now).await.unwrap();
    let index = portcullis::local::index_key(&t, &c);
    store
        .set_remove(&index, &hex::encode(sha2::Sha256::digest(from.as_bytes())))
        .await
        .unwrap();
    store
        .set_add(&index, &hex::encode(sha2::Sha256::digest(to.as_bytes())), None)
        .await
        .unwrap();
}

/// An account stored before addresses had one spelling, under its
/// Unicode domain, is found by every spelling (`local.earlier_spelling`):
/// the A-label signs in to it, and a sign-up with another spelling is
/// answered as a taken address and makes no account under the one
/// spelling; an admin reaches it by the A-label too.
#[tokio::test]
async fn local_an_account_stored_under_an_earlier_spelling_is_found_by_every_spelling() {
    use crate::support::logs::Captured;
    let (logs, _capture) = Captured::start();
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    let earlier = "jo@b\u{fc}cher.example";
    let a_label = "jo@xn--bcher-kva.example";
    create_account(&app, earlier, GOOD_PASSWORD).await;
    store_under(&app, a_label, earlier).await;
    assert_eq!(stored_addresses(&app).await, [earlier]);

    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    let back = sign_in_from(&mut browser, &sign_in, a_label, GOOD_PASSWORD).await;
    assert!(back.query_pairs().any(|(k, _)| k == "code"), "{back}");
    assert!(
        !logs.with_reason("local.earlier_spelling").is_empty(),
        "{}",
        logs.text()
    );

    let mut stranger = Browser::new();
    let sign_in = start(&app, &mut stranger, &pkce()).await;
    let confirm = sign_up(
        &mut stranger,
        &sign_in,
        "JO@XN--BCHER-KVA.example",
        "Attackers-Own-Pass-1",
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert_eq!(logged(&logs, "local.sign_up_existing").await, 1, "{}", logs.text());
    assert!(logs.with_reason("local.signed_up").is_empty(), "{}", logs.text());
    assert_eq!(stored_addresses(&app).await, [earlier]);

    let (status, body) = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{TENANT}/connections/{CONN}/users/{a_label}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], earlier, "{body}");
}

/// An account an earlier version stored under the decomposed (NFD)
/// spelling someone typed is found by the composed one too: it signs in
/// with the precomposed or full-width spelling (`local.earlier_spelling`),
/// and a sign-up of the composed spelling is answered as a taken address
/// and makes no account under the one spelling.
#[tokio::test]
async fn local_an_account_stored_decomposed_is_found_by_its_composed_spelling() {
    use crate::support::logs::Captured;
    let (logs, _capture) = Captured::start();
    let smtp = SmtpServer::start();
    let app = gateway(&smtp, None).await;
    setup(&app).await;
    create_account(&app, NFC, GOOD_PASSWORD).await;
    store_under(&app, NFC, NFD).await;
    assert_eq!(stored_addresses(&app).await, [NFD]);

    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = start(&app, &mut browser, &p).await;
    sign_in_from(&mut browser, &sign_in, WIDE, GOOD_PASSWORD).await;
    assert!(
        !logs.with_reason("local.earlier_spelling").is_empty(),
        "{}",
        logs.text()
    );

    let mut stranger = Browser::new();
    let sign_in = start(&app, &mut stranger, &pkce()).await;
    sign_up(&mut stranger, &sign_in, NFC, "Attackers-Own-Pass-1").await;
    assert_eq!(logged(&logs, "local.sign_up_existing").await, 1, "{}", logs.text());
    assert!(logs.with_reason("local.signed_up").is_empty(), "{}", logs.text());
    assert_eq!(stored_addresses(&app).await, [NFD]);
}
