//! What the gateway lets out in its logs: with every level on (TRACE, span
//! fields included), a whole sign-in, its tokens' uses and the refusals of
//! made-up ones write none of the codes, tokens, secrets, handles and
//! cookies that went through it.

use crate::support::browser::Browser;
use crate::support::local::{assert_reason, link, pkce, Gateway, World, REDIRECT};
use crate::support::logs::Captured;
use crate::support::oidc_world::{random_token, ClientAuth, OidcWorld, Pkce, ACME, CONN};
use crate::support::smtp::SmtpServer;
use reqwest::StatusCode;
use serde_json::json;

/// The query values of the browser's trip that act as bearer handles.
const HANDLES: [&str; 5] = ["code", "state", "RelayState", "SAMLResponse", "token"];

/// The captured lines without their times (a timestamp's or a duration's
/// digits could look like a six-digit code).
fn untimed(logs: &Captured) -> Vec<String> {
    logs.text()
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("timestamp");
                }
                if let Some(f) = v.get_mut("fields").and_then(|f| f.as_object_mut()) {
                    f.remove("time.busy");
                    f.remove("time.idle");
                }
                v.to_string()
            }
            Err(_) => l.to_owned(),
        })
        .collect()
}

/// Whether `line` holds `secret` as a whole word: a six-digit code
/// counts only where no digit is next to it.
fn holds(line: &str, secret: &str) -> bool {
    line.match_indices(secret).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + secret.len()..].chars().next();
        !(before.is_some_and(|c| c.is_ascii_digit()) || after.is_some_and(|c| c.is_ascii_digit()))
    })
}

/// Every captured line holding one of `secrets`, by what it is.
fn leaks(logs: &Captured, secrets: &[(String, String)]) -> Vec<String> {
    let lines = untimed(logs);
    let mut found = Vec::new();
    for (what, secret) in secrets {
        assert!(secret.len() >= 6, "{what} is too short to look for: {secret:?}");
        for line in lines.iter().filter(|l| holds(l, secret)) {
            found.push(format!("{what}: {}", line.chars().take(600).collect::<String>()));
        }
    }
    found
}

#[tokio::test(flavor = "current_thread")]
async fn no_code_token_secret_or_cookie_of_a_sign_in_reaches_a_log_line_at_any_level() {
    let (logs, _guard) = Captured::start_everything();
    let w = OidcWorld::new().await;
    let app = &w.app;
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, value: &str| secrets.push((what.to_owned(), value.to_owned()));

    // A sign-in through the upstream IdP, with PKCE.
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    let state = random_token();
    let back = w
        .raw_authorize(
            &mut browser,
            &w.raw_a,
            &[
                ("tenant", ACME),
                ("state", &state),
                ("nonce", &random_token()),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ],
            Some("alice"),
        )
        .await;
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {back}"));
    for hop in &browser.history {
        for (k, v) in hop.url.query_pairs() {
            if HANDLES.contains(&k.as_ref()) {
                keep(&format!("{k} in {}", hop.url.path()), &v);
            }
        }
    }
    let cookies = browser.cookies_for(&app.url("/")).unwrap_or_default();
    for pair in cookies.split("; ") {
        if let Some((name, value)) = pair.split_once('=') {
            keep(&format!("cookie {name}"), value);
        }
    }
    assert!(cookies.contains('='), "the browser holds the gateway's cookies");
    keep("PKCE verifier", &pkce.verifier);
    keep("client secret", w.raw_a.secret());

    // Its tokens, used and refreshed.
    let tokens = w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.body);
    let access = tokens.body["access_token"].as_str().unwrap().to_owned();
    let id_token = tokens.body["id_token"].as_str().unwrap().to_owned();
    let refresh = tokens.body["refresh_token"].as_str().unwrap().to_owned();
    let userinfo = app
        .client
        .get(w.endpoint("userinfo_endpoint"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 200);
    let rotated = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Basic(&w.raw_a.reg.client_id, w.raw_a.secret()),
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let rotated_refresh = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(w.introspect(&w.raw_a, &access).await["active"], true);
    keep("access token", &access);
    keep("ID token", &id_token);
    keep("access token signature", access.rsplit('.').next().unwrap());
    keep("refresh token", &refresh);
    keep("refresh token's secret", refresh.rsplit('.').next().unwrap());
    keep(
        "rotated refresh token's secret",
        rotated_refresh.rsplit('.').next().unwrap(),
    );
    keep("code's random part", code.rsplit('.').next().unwrap());

    // Reuse and made-up values, each refused.
    let reused = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Basic(&w.raw_a.reg.client_id, w.raw_a.secret()),
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .await;
    assert_eq!(reused.error(), Some("invalid_grant"));
    assert_eq!(
        w.redeem(&w.raw_a, &code, Some(&pkce.verifier)).await.error(),
        Some("invalid_grant")
    );
    let made_up_code = format!("{ACME}.{}", random_token());
    let made_up_verifier = format!("{}{}", random_token(), random_token());
    assert_eq!(
        w.redeem(&w.raw_a, &made_up_code, Some(&made_up_verifier)).await.error(),
        Some("invalid_grant")
    );
    let made_up_refresh = format!("{ACME}.{}.{}", random_token(), random_token());
    let refused = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Basic(&w.raw_a.reg.client_id, w.raw_a.secret()),
            &[("grant_type", "refresh_token"), ("refresh_token", &made_up_refresh)],
        )
        .await;
    assert_eq!(refused.error(), Some("invalid_grant"));
    let wrong_secret = format!("wrong-{}", random_token());
    let refused = w
        .oauth_post(
            "token_endpoint",
            ClientAuth::Post(&w.raw_a.reg.client_id, &wrong_secret),
            &[("grant_type", "refresh_token"), ("refresh_token", &rotated_refresh)],
        )
        .await;
    assert_eq!(refused.error(), Some("invalid_client"));
    let made_up_bearer = format!("{}.{}.{}", random_token(), random_token(), random_token());
    let userinfo = app
        .client
        .get(w.endpoint("userinfo_endpoint"))
        .bearer_auth(&made_up_bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401);
    let forged = format!("{}.{}", access.rsplit_once('.').unwrap().0, random_token());
    let userinfo = app
        .client
        .get(w.endpoint("userinfo_endpoint"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401);
    for token in [&made_up_bearer, &rotated_refresh, &access] {
        let revoked = w
            .oauth_post(
                "revocation_endpoint",
                ClientAuth::Basic(&w.raw_a.reg.client_id, w.raw_a.secret()),
                &[("token", token)],
            )
            .await;
        assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    }
    let mut bogus = app.oidc_callback(ACME, CONN);
    let (bogus_state, bogus_code) = (random_token(), random_token());
    bogus
        .query_pairs_mut()
        .append_pair("state", &bogus_state)
        .append_pair("code", &bogus_code);
    assert_eq!(app.client.get(bogus).send().await.unwrap().status(), 400);
    keep("made-up code", &made_up_code);
    keep("made-up verifier", &made_up_verifier);
    keep(
        "made-up refresh token's secret",
        made_up_refresh.rsplit('.').next().unwrap(),
    );
    keep("wrong client secret", &wrong_secret);
    keep("made-up bearer", &made_up_bearer);
    keep("forged signature", forged.rsplit('.').next().unwrap());
    keep("callback state", &bogus_state);
    keep("callback code", &bogus_code);

    // The admin API's own secrets: a tenant API key, wrong and right, and a
    // setup link, looked at and made up.
    let key = app
        .admin_create(&format!("/admin/v1/tenants/{ACME}/api-keys"), json!({}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong_key = format!("{}{}", key.rsplit_once('.').unwrap().0, ".wrong-secret-0123456789");
    for (bearer, status) in [(&key, StatusCode::OK), (&wrong_key, StatusCode::UNAUTHORIZED)] {
        let resp = app
            .client
            .get(app.url(&format!("/admin/v1/tenants/{ACME}")))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
    }
    let link = app
        .admin_create(
            &format!("/admin/v1/tenants/{ACME}/setup-links"),
            json!({ "ttl_secs": 600 }),
        )
        .await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = url::Url::parse(&link).unwrap();
    let link_token = link.path().rsplit('/').next().unwrap().to_owned();
    assert_eq!(app.client.get(link.clone()).send().await.unwrap().status(), 200);
    let made_up_link = random_token();
    let resp = app
        .client
        .get(app.url(&format!("/setup/{made_up_link}")))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    keep("tenant API key's secret", key.rsplit('.').next().unwrap());
    keep("wrong API key's secret", wrong_key.rsplit('.').next().unwrap());
    keep("setup link token", &link_token);
    keep("made-up setup link token", &made_up_link);
    keep("admin token", &app.admin_token);

    let found = leaks(&logs, &secrets);
    assert!(
        found.is_empty(),
        "{} log lines hold a secret:\n{}",
        found.len(),
        found.join("\n")
    );
    // The capture saw the flow at every level, spans included.
    let text = logs.text();
    assert!(text.contains("\"level\":\"DEBUG\"") || text.contains("\"level\":\"TRACE\""));
    assert!(text.contains("login.succeeded"));
}

#[tokio::test(flavor = "current_thread")]
async fn no_password_mailed_code_or_address_of_a_local_account_reaches_a_log_line_at_any_level() {
    let (logs, _guard) = Captured::start_everything();
    let smtp = SmtpServer::start();
    let app = Gateway {
        smtp: Some(&smtp),
        ..Gateway::default()
    }
    .spawn()
    .await;
    let world = World {
        tenant: "acme",
        connection: "pw",
        client: "local-app",
        scope: "openid email profile",
    }
    .create(&app, "Acme Corp", "acme.example")
    .await;
    let email = "grace.logs@acme.example";
    let (first, second, wrong) = ("Tangerine-Orbit-42", "Marigold-Canyon-77", "Wrong-Guess-Plum-31");

    // Sign-up, a wrong code, the right one.
    let p = pkce();
    let mut browser = Browser::new();
    let sign_in = world.start(&app, &mut browser, &p).await;
    let form = browser.get(&link(&sign_in, "Create account")).await;
    let confirm = browser
        .fill_and_submit(
            &form,
            None,
            &[
                ("email", email),
                ("given_name", "Grace"),
                ("family_name", "Hopper"),
                ("password", first),
                ("password_confirm", first),
            ],
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    let code = smtp.wait_for(email).await.code();
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let refused = browser
        .fill_and_submit(&confirm, None, &[("email", email), ("code", wrong_code)])
        .await;
    assert_reason(&refused, 400, "local.code_invalid");
    let confirmed = browser
        .fill_and_submit(&refused, None, &[("email", email), ("code", &code)])
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);

    // A wrong password, the right one, the tokens.
    let page = browser.get(&sign_in.url).await;
    let bad = browser
        .fill_and_submit(&page, None, &[("email", email), ("password", wrong)])
        .await;
    assert_reason(&bad, 401, "local.bad_credentials");
    let page = world.start(&app, &mut browser, &p).await;
    let mut form = page.form(None);
    form.set("email", email);
    form.set("password", first);
    let back = browser
        .submit_until(&page, &form, &crate::support::local::at_app)
        .await
        .stopped();
    assert!(back.as_str().starts_with(REDIRECT));
    let tokens = world.redeem(&app, &back, &p, None).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    // Forgot: a reset by mailed code to a new password.
    let forgot = browser.get(&link(&sign_in, "Forgot password?")).await;
    let reset = browser.fill_and_submit(&forgot, None, &[("email", email)]).await;
    let reset_code = smtp.wait_for_after(email, 1).await.code();
    let done = browser
        .fill_and_submit(
            &reset,
            None,
            &[
                ("email", email),
                ("code", &reset_code),
                ("password", second),
                ("password_confirm", second),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    world.sign_in(&app, email, second, None).await;

    let mut secrets: Vec<(String, String)> = vec![
        ("first password".into(), first.into()),
        ("second password".into(), second.into()),
        ("wrong password".into(), wrong.into()),
        ("confirmation code".into(), code.clone()),
        ("wrong code".into(), wrong_code.into()),
        ("reset code".into(), reset_code.clone()),
        ("email address".into(), email.into()),
        ("PKCE verifier".into(), p.verifier.clone()),
        ("access token".into(), access),
    ];
    let cookies = browser.cookies_for(&app.url("/")).unwrap_or_default();
    for pair in cookies.split("; ") {
        if let Some((name, value)) = pair.split_once('=') {
            secrets.push((format!("cookie {name}"), value.to_owned()));
        }
    }
    for hop in &browser.history {
        for (k, v) in hop.url.query_pairs() {
            if HANDLES.contains(&k.as_ref()) && v.len() >= 6 {
                secrets.push((format!("{k} in {}", hop.url.path()), v.into_owned()));
            }
        }
    }
    let found = leaks(&logs, &secrets);
    assert!(
        found.is_empty(),
        "{} log lines hold a secret:\n{}",
        found.len(),
        found.join("\n")
    );
    assert!(logs.text().contains("local.confirmed"));
}

#[tokio::test(flavor = "current_thread")]
async fn no_saml_response_assertion_relay_state_or_handle_reaches_a_log_line_at_any_level() {
    use crate::support::peers::IDP_PASSWORD;
    use crate::support::saml_world::{SamlWorld, SAML_CONN, TENANT};
    use base64::Engine as _;
    let (logs, _guard) = Captured::start_everything();
    let w = SamlWorld::new().await;
    let mut browser = Browser::new();
    let login = browser
        .get(&w.rp.login_url(&[("tenant", TENANT), ("connection", SAML_CONN)]))
        .await;
    let post_page = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    let saml_post = post_page.form(Some("saml-post"));
    let response = saml_post.field("SAMLResponse").unwrap().to_owned();
    let relay = saml_post.field("RelayState").unwrap_or_default().to_owned();
    let done = browser.submit(&post_page, &saml_post).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(w.rp.is_callback(&done.url), "{}", browser.trail());
    // The same Response again, from another browser: refused.
    let mut attacker = Browser::new();
    attacker.submit(&post_page, &saml_post).await;

    let xml = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(response.split_whitespace().collect::<String>())
            .unwrap(),
    )
    .unwrap();
    let signature = xml
        .split("SignatureValue>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .map(|s| s.split_whitespace().collect::<String>())
        .filter(|s| s.len() >= 40)
        .unwrap_or_else(|| panic!("no signature in {xml}"));
    let middle = response.len() / 2;
    let mut secrets: Vec<(String, String)> = vec![
        ("SAMLResponse".into(), response[middle..middle + 64].to_owned()),
        ("assertion signature".into(), signature[..40].to_owned()),
    ];
    if relay.len() >= 12 {
        secrets.push(("RelayState".into(), relay));
    }
    for hop in browser.history.iter().chain(&attacker.history) {
        for (k, v) in hop.url.query_pairs() {
            if (HANDLES.contains(&k.as_ref()) || k == "handle") && v.len() >= 12 {
                secrets.push((format!("{k} in {}", hop.url.path()), v.into_owned()));
            }
        }
    }
    let cookies = browser.cookies_for(&w.app.url("/")).unwrap_or_default();
    for pair in cookies.split("; ") {
        if let Some((name, value)) = pair.split_once('=') {
            secrets.push((format!("cookie {name}"), value.to_owned()));
        }
    }
    let found = leaks(&logs, &secrets);
    assert!(
        found.is_empty(),
        "{} log lines hold a secret:\n{}",
        found.len(),
        found.join("\n")
    );
    assert!(logs.text().contains("login.succeeded"));
}
