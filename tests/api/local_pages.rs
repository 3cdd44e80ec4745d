//! The local-account pages (issue 10): Post/Redirect/Get (a successful form
//! answers 303 to a page that shows its message once, so a reload or "back"
//! never sends it again; refusals stay on the form with their status and
//! reason code), and changing the password from an SSO session without
//! typing the email: the current password is still required, and the change
//! ends every session and refresh family of the account and refuses its
//! earlier tokens.

use crate::support::browser::{Browser, Page};
use crate::support::local::{assert_reason, link, pkce, statuses_since, Gateway, World};
use crate::support::smtp::SmtpServer;
use reqwest::StatusCode;

const WORLD: World = World {
    tenant: "acme",
    connection: "pw",
    client: "local-app",
    scope: "openid email offline_access",
};
const PASSWORD: &str = "Tangerine-Orbit-42";
const NEW_PASSWORD: &str = "Marigold-Canyon-77";

/// Submits the form on `page` with `values`: the page the browser ends on
/// and the statuses of the requests it took (`[303, 200]` for PRG).
async fn send(browser: &mut Browser, page: &Page, values: &[(&str, &str)]) -> (Page, Vec<u16>) {
    let from = browser.history.len();
    let next = browser.fill_and_submit(page, None, values).await;
    (next, statuses_since(browser, from))
}

fn ends_on(page: &Page, path: &str) {
    assert!(
        page.url.path().ends_with(path),
        "expected {path}, at {}: {}",
        page.url,
        page.body
    );
}

#[tokio::test]
async fn local_forms_answer_303_and_the_next_page_shows_the_message_once() {
    let smtp = SmtpServer::start();
    let app = Gateway {
        smtp: Some(&smtp),
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create(&app, "Acme Corp", "acme.example").await;
    let email = "grace@acme.example";
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = WORLD.start(&app, &mut browser, &p).await;

    // Sign-up → 303 → the confirm page, with the message and the address.
    let form = browser.get(&link(&sign_in, "Create account")).await;
    let (confirm, hops) = send(
        &mut browser,
        &form,
        &[("email", email), ("password", PASSWORD), ("password_confirm", PASSWORD)],
    )
    .await;
    assert_eq!(hops, [303, 200]);
    ends_on(&confirm, "/confirm");
    assert!(confirm.body.contains("we have sent a 6-digit code"), "{}", confirm.body);
    assert_eq!(confirm.form(None).field("email"), Some(email));
    assert!(
        confirm.url.query().unwrap_or("").contains("login="),
        "the sign-in goes on"
    );
    // A reload is a GET of the confirm page: nothing is sent again, and the
    // message was shown once.
    let reloaded = browser.get(&confirm.url).await;
    assert_eq!(reloaded.status, StatusCode::OK);
    assert!(!reloaded.body.contains("we have sent a 6-digit code"));
    let code = smtp.wait_for(email).await.code();
    smtp.assert_none_after(email, 1, std::time::Duration::from_millis(200))
        .await;

    // A refusal stays on the form, with its status and reason code.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (refused, hops) = send(&mut browser, &reloaded, &[("email", email), ("code", wrong)]).await;
    assert_eq!(hops, [400]);
    assert_reason(&refused, 400, "local.code_invalid");

    // Confirm → 303 → sign-in with the message.
    let (signed, hops) = send(&mut browser, &refused, &[("email", email), ("code", &code)]).await;
    assert_eq!(hops, [303, 200]);
    ends_on(&signed, "/sign-in");
    assert!(
        signed.body.contains("Your email address is confirmed"),
        "{}",
        signed.body
    );

    // Resend → 303 → confirm; forgot → 303 → reset; reset → 303 → sign-in.
    let resend = browser.get(&WORLD.page(&app, "resend")).await;
    let (after, hops) = send(&mut browser, &resend, &[("email", "nobody@acme.example")]).await;
    assert_eq!(hops, [303, 200]);
    ends_on(&after, "/confirm");
    assert!(after.body.contains("we have sent a new code"), "{}", after.body);
    let forgot = browser.get(&link(&sign_in, "Forgot password?")).await;
    let (reset, hops) = send(&mut browser, &forgot, &[("email", email)]).await;
    assert_eq!(hops, [303, 200]);
    ends_on(&reset, "/reset");
    let code = smtp.wait_for_after(email, 1).await.code();
    let (done, hops) = send(
        &mut browser,
        &reset,
        &[
            ("email", email),
            ("code", &code),
            ("password", NEW_PASSWORD),
            ("password_confirm", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(hops, [303, 200]);
    ends_on(&done, "/sign-in");
    assert!(done.body.contains("Your password has been changed"), "{}", done.body);

    // Change password (not signed in: by address) → 303 → sign-in.
    let change = browser.get(&link(&sign_in, "Change password")).await;
    assert!(
        change.form(None).field("email").is_some(),
        "not signed in: the address is asked"
    );
    let (changed, hops) = send(
        &mut browser,
        &change,
        &[
            ("email", email),
            ("current_password", NEW_PASSWORD),
            ("password", PASSWORD),
            ("password_confirm", PASSWORD),
        ],
    )
    .await;
    assert_eq!(hops, [303, 200]);
    ends_on(&changed, "/sign-in");
    assert!(
        changed.body.contains("Your password has been changed"),
        "{}",
        changed.body
    );
}

/// A gateway on a manual clock, with [`WORLD`] created.
async fn world_on_a_manual_clock() -> (portcullis::clock::ManualClock, crate::support::app::TestApp) {
    let clock = crate::support::local::far_clock();
    let app = Gateway {
        clock: Some(clock.clone()),
        ..Gateway::default()
    }
    .spawn()
    .await;
    WORLD.create(&app, "Acme Corp", "acme.example").await;
    (clock, app)
}

#[tokio::test]
async fn a_signed_in_user_changes_the_password_without_the_email_and_every_session_ends() {
    let (clock, app) = world_on_a_manual_clock().await;
    let email = "ada@acme.example";
    WORLD.account(&app, email, PASSWORD).await;
    let mut browser = Browser::new();
    let mine = WORLD
        .sign_in_in(&app, &mut browser, email, PASSWORD, None)
        .await
        .unwrap();
    let elsewhere = WORLD.sign_in(&app, email, PASSWORD, None).await;

    // Signed in: the page asks no address, only the passwords.
    let page = browser.get(&WORLD.page(&app, "change-password")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.form(None).field("email").is_none(), "{}", page.body);
    assert!(page.body.contains("You are signed in"), "{}", page.body);
    assert!(page.body.contains(email), "{}", page.body);

    // The current password is still required, and counted.
    let (wrong, hops) = send(
        &mut browser,
        &page,
        &[
            ("current_password", "Not-The-Password-1"),
            ("password", NEW_PASSWORD),
            ("password_confirm", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(hops, [401]);
    assert_reason(&wrong, 401, "local.bad_credentials");
    assert!(
        wrong.form(None).field("email").is_none(),
        "still signed in: {}",
        wrong.body
    );
    let (mismatch, _) = send(
        &mut browser,
        &wrong,
        &[
            ("current_password", PASSWORD),
            ("password", NEW_PASSWORD),
            ("password_confirm", "Something-Else-88"),
        ],
    )
    .await;
    assert_reason(&mismatch, 400, "local.password_mismatch");
    // An address posted anyway is not the one changed: the session's is.
    clock.advance(chrono::Duration::seconds(1));
    let (done, hops) = send(
        &mut browser,
        &mismatch,
        &[
            ("email", "someone-else@acme.example"),
            ("current_password", PASSWORD),
            ("password", NEW_PASSWORD),
            ("password_confirm", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(hops, [303, 200]);
    ends_on(&done, "/sign-in");
    assert!(done.body.contains("Sign in with the new password"), "{}", done.body);
    assert_eq!(done.form(None).field("email"), Some(email));

    // Every session and family ended, this browser's too; earlier tokens
    // are refused.
    let provider = &app.state.provider;
    for tokens in [&mine, &elsewhere] {
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(
            provider.check_access_token(access).await.unwrap_err().reason,
            "token.credentials_reset"
        );
        let resp = app
            .client
            .post(app.url("/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", WORLD.client),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
    // Signed out here: the page asks the address again, and the next
    // sign-in asks the (new) password.
    let page = browser.get(&WORLD.page(&app, "change-password")).await;
    assert!(page.form(None).field("email").is_some(), "{}", page.body);
    assert_reason(
        &WORLD
            .sign_in_in(&app, &mut browser, email, PASSWORD, None)
            .await
            .unwrap_err(),
        401,
        "local.bad_credentials",
    );
    let again = WORLD
        .sign_in_in(&app, &mut browser, email, NEW_PASSWORD, None)
        .await
        .unwrap();
    provider
        .check_access_token(again["access_token"].as_str().unwrap())
        .await
        .unwrap();

    // Not signed in and no address: refused with its reason.
    let mut fresh = Browser::new();
    let page = fresh.get(&WORLD.page(&app, "change-password")).await;
    let (refused, _) = send(
        &mut fresh,
        &page,
        &[
            ("current_password", NEW_PASSWORD),
            ("password", PASSWORD),
            ("password_confirm", PASSWORD),
        ],
    )
    .await;
    assert_reason(&refused, 400, "local.bad_email");
}

/// A password alone does not change the password of an account with a
/// second factor: the change signs its owner out everywhere, so whoever
/// had only the password could lock the owner out until a reset. The form
/// (not signed in) is refused after the current password was checked
/// (`local.change_needs_second_factor`, 403) and the password stays; signed
/// in through the second factor, the same change works.
#[tokio::test]
async fn a_password_alone_does_not_change_the_password_of_an_account_with_a_second_factor() {
    use portcullis::mfa::totp;
    let (clock, app) = world_on_a_manual_clock().await;
    let resp = app
        .client
        .patch(app.url(&format!("/admin/v1/tenants/{}", WORLD.tenant)))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/merge-patch+json")
        .json(&serde_json::json!({"settings": {"local_mfa": "optional"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let email = "kit@acme.example";
    WORLD.account(&app, email, PASSWORD).await;
    // Signed in once (no factor yet), then a TOTP enrolment for the user.
    let tokens = WORLD.sign_in(&app, email, PASSWORD, None).await;
    let claims: serde_json::Value = app
        .state
        .provider
        .keys
        .verify(tokens["id_token"].as_str().unwrap(), "JWT", &app.state.provider.iss())
        .await
        .unwrap();
    let sub = claims["sub"].as_str().unwrap().to_owned();
    let mfa = portcullis::mfa::Mfa::new(app.state.store.clone(), std::sync::Arc::new(clock.clone()));
    let enrolment = mfa.start_enrolment(&WORLD.t(), &sub, "flow").await.unwrap();
    let key = totp::base32_decode(&enrolment.secret).unwrap();
    let code_now = || {
        use portcullis::clock::Clock;
        totp::code_at(totp::Algorithm::Sha1, &key, totp::step_of(clock.unix()).unwrap(), 6).unwrap()
    };
    mfa.confirm(
        &WORLD.t(),
        &sub,
        "flow",
        portcullis::mfa::AddedFrom::Session,
        &code_now(),
    )
    .await
    .unwrap();

    // Not signed in: the right current password is not enough.
    let mut stranger = Browser::new();
    let page = stranger.get(&WORLD.page(&app, "change-password")).await;
    let (refused, hops) = send(
        &mut stranger,
        &page,
        &[
            ("email", email),
            ("current_password", PASSWORD),
            ("password", NEW_PASSWORD),
            ("password_confirm", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(hops, [403]);
    assert_reason(&refused, 403, "local.change_needs_second_factor");
    // The password is unchanged: it still leads to the second factor.
    let mut owner = Browser::new();
    let challenge = WORLD
        .sign_in_in(&app, &mut owner, email, PASSWORD, None)
        .await
        .expect_err("a second factor is asked");
    assert!(challenge.url.path().starts_with("/mfa/"), "{}", owner.trail());

    // Signed in through the second factor, the change is made.
    clock.advance(chrono::Duration::seconds(30));
    let mut form = challenge.form(None);
    form.set("code", &code_now());
    let back = owner
        .submit_until(&challenge, &form, &crate::support::local::at_app)
        .await
        .stopped();
    assert!(back.query_pairs().any(|(k, _)| k == "code"), "{back}");
    let page = owner.get(&WORLD.page(&app, "change-password")).await;
    assert!(page.body.contains("You are signed in"), "{}", page.body);
    clock.advance(chrono::Duration::seconds(1));
    let (done, hops) = send(
        &mut owner,
        &page,
        &[
            ("current_password", PASSWORD),
            ("password", NEW_PASSWORD),
            ("password_confirm", NEW_PASSWORD),
        ],
    )
    .await;
    assert_eq!(hops, [303, 200], "{}", done.body);
    assert!(done.body.contains("Sign in with the new password"), "{}", done.body);
}
