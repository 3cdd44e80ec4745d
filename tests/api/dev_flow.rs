//! The first run: dev mode's demo app signs in through the built-in test IdP
//! and the real provider, and shows the claims. Also: the dev IdP does not
//! exist outside dev mode, and home-realm discovery picks the tenant by email.

use crate::support::app::{spawn_app, AppOptions};
use crate::support::browser::Browser;
use reqwest::StatusCode;

/// A gateway in dev mode (demo tenant, dev IdP, demo app).
async fn dev_app() -> crate::support::app::TestApp {
    spawn_app(AppOptions {
        dev: true,
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn the_demo_app_signs_in_through_the_dev_idp_and_shows_the_claims() {
    let app = dev_app().await;
    let mut browser = Browser::new();
    let home = browser.get(&app.url("/demo")).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        home.body.contains("Development identity provider"),
        "dev pages carry the warning banner"
    );
    let login = browser.get(&app.url("/demo/login")).await;
    assert!(
        login.url.path().starts_with("/dev/demo/dev/login"),
        "landed on {}",
        login.url
    );
    let done = browser
        .fill_and_submit(
            &login,
            None,
            &[
                ("email", "Ada@Demo.Example"),
                ("given_name", "Ada"),
                ("family_name", "Lovelace"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.url.path().starts_with("/demo/callback"));
    for needle in [
        "&quot;email&quot;: &quot;ada@demo.example&quot;",
        "&quot;tenant&quot;: &quot;demo&quot;",
        "&quot;connection&quot;: &quot;dev&quot;",
        "&quot;name&quot;: &quot;Ada Lovelace&quot;",
    ] {
        assert!(done.body.contains(needle), "missing {needle} in {}", done.body);
    }
    assert!(done.body.contains("Refresh token issued: true"));

    // SSO: a second sign-in from the demo app needs no trip to the dev IdP.
    browser.clear_history();
    let again = browser.get(&app.url("/demo/login")).await;
    assert!(
        again.url.path().starts_with("/demo/callback"),
        "expected SSO, landed on {}",
        again.url
    );
    assert!(!browser.trail().contains("/dev/demo/dev/login"), "{}", browser.trail());
}

#[tokio::test]
async fn the_dev_idp_and_demo_app_do_not_exist_outside_dev_mode() {
    let app = spawn_app(AppOptions::default()).await;
    for path in ["/demo", "/demo/login", "/dev/demo/dev/login"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn home_realm_discovery_asks_for_the_email_and_routes_by_domain() {
    let app = dev_app().await;
    let mut browser = Browser::new();
    let mut url = app.url("/authorize");
    let challenge = portcullis::tokens::sha256_base64url(b"a-verifier-that-is-long-enough-to-be-valid-for-pkce");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "demo")
        .append_pair("redirect_uri", app.url("/demo/callback").as_str())
        .append_pair("scope", "openid")
        .append_pair("state", "s1")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let ask = browser.get(&url).await;
    assert!(ask.body.contains("Work email"), "{}", ask.body);
    let unknown = browser
        .fill_and_submit(&ask, None, &[("login_hint", "x@unknown.example")])
        .await;
    assert!(
        unknown
            .body
            .contains("No organization uses single sign-on for that email domain"),
        "{}",
        unknown.body
    );
    let routed = browser
        .fill_and_submit(&unknown, None, &[("login_hint", "bob@demo.example")])
        .await;
    assert!(
        routed.url.path().starts_with("/dev/demo/dev/login"),
        "landed on {}",
        routed.url
    );
    assert!(
        routed.body.contains("bob@demo.example"),
        "the hint is passed on to the IdP"
    );
}

/// Registers a confidential client and signs in through the dev IdP with it,
/// stopping at the redirect back to the app. Returns (secret, code, verifier, redirect URI).
async fn dev_code(app: &crate::support::app::TestApp, client_id: &str) -> (String, String, String, url::Url) {
    let redirect = url::Url::parse("https://app.example.test/cb").unwrap();
    let registered = app.create_client(client_id, client_id, &[&redirect], false).await;
    let verifier = portcullis::tokens::random_token(32);
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect.as_str())
        .append_pair("scope", "openid email")
        .append_pair("tenant", "demo")
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(verifier.as_bytes()),
        )
        .append_pair("code_challenge_method", "S256");
    let mut browser = Browser::new();
    let login = browser.get(&url).await;
    let stop = |u: &url::Url| u.host_str() == Some("app.example.test");
    let form = login.form(None);
    let back = browser.submit_until(&login, &form, &stop).await.stopped();
    let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    (registered.client_secret.unwrap(), code, verifier, redirect)
}

async fn redeem(
    app: &crate::support::app::TestApp,
    client_id: &str,
    (secret, code, verifier, redirect): &(String, String, String, url::Url),
) -> reqwest::Response {
    app.client
        .post(app.url("/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap()
}

/// The token endpoint re-checks the app's tenant restriction, so a code
/// issued before an app was restricted cannot be redeemed for that tenant.
#[tokio::test]
async fn a_code_for_a_tenant_the_app_may_no_longer_serve_is_refused_at_the_token_endpoint() {
    let app = dev_app().await;
    let got = dev_code(&app, "restricted").await;

    // The app is now restricted to another tenant.
    let mut client =
        std::sync::Arc::unwrap_or_clone(app.state.provider.clients.get("restricted").await.unwrap().unwrap());
    client.allowed_tenants = vec![portcullis::ids::TenantId::parse("globex").unwrap()];
    app.state.provider.clients.put(&client).await.unwrap();

    let resp = redeem(&app, "restricted", &got).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].as_str().unwrap().contains("tenant"), "{body}");
}

/// Login CSRF: a callback URL completed in one browser cannot be replayed
/// into another browser to sign it in as someone else.
#[tokio::test]
async fn a_callback_finished_in_another_browser_is_refused() {
    let app = dev_app().await;
    let mut attacker = Browser::new();
    let login = attacker.get(&app.url("/demo/login")).await;
    let form = login.form(None);
    let is_callback = |u: &url::Url| u.path().ends_with("/callback") && u.path().starts_with("/dev/");
    let callback = attacker.submit_until(&login, &form, &is_callback).await.stopped();

    let mut victim = Browser::new();
    let page = victim.get(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("callback.browser_mismatch"), "{}", page.body);
    assert!(
        victim
            .cookies_for(&app.url("/authorize"))
            .is_none_or(|c| !c.contains("portcullis_session")),
        "the victim must not have been given a session"
    );
}

/// ES256 and EdDSA are selectable: discovery, JWKS and the tokens follow.
#[tokio::test]
async fn the_signing_algorithm_is_selectable() {
    fn es256(s: &mut portcullis::config::Settings) {
        s.tokens.algorithm = "ES256".into();
    }
    fn eddsa(s: &mut portcullis::config::Settings) {
        s.tokens.algorithm = "EdDSA".into();
    }
    for (tweak, alg, kty) in [
        (es256 as fn(&mut portcullis::config::Settings), "ES256", "EC"),
        (eddsa, "EdDSA", "OKP"),
    ] {
        let app = spawn_app(AppOptions {
            dev: true,
            tweak: Some(tweak),
            ..AppOptions::default()
        })
        .await;
        let disco = app.get_json("/.well-known/openid-configuration").await;
        assert_eq!(disco["id_token_signing_alg_values_supported"], serde_json::json!([alg]));
        let jwks = app.get_json("/jwks").await;
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["kty"] == kty && k["alg"] == alg),
            "{jwks}"
        );
        let got = dev_code(&app, "app").await;
        let tokens: serde_json::Value = redeem(&app, "app", &got).await.json().await.unwrap();
        for token in ["id_token", "access_token"] {
            let header = jsonwebtoken::decode_header(tokens[token].as_str().unwrap()).unwrap();
            assert_eq!(format!("{:?}", header.alg), alg, "{token}");
            let kid = header.kid.unwrap();
            assert!(
                jwks["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kid"] == kid.as_str()),
                "{token} kid published"
            );
        }
    }
}

/// `prompt=none` never shows a page: without a session the app gets
/// `login_required`; an unknown tenant is `invalid_request`; both keep `state`.
#[tokio::test]
async fn prompt_none_and_unknown_tenants_answer_the_app_with_an_error() {
    let app = dev_app().await;
    let redirect = url::Url::parse("https://app.example.test/cb").unwrap();
    app.create_client("app", "App", &[&redirect], false).await;
    let ask = |extra: &[(&str, &str)]| {
        let mut url = app.url("/authorize");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "app")
            .append_pair("redirect_uri", redirect.as_str())
            .append_pair("scope", "openid")
            .append_pair("state", "st");
        for (k, v) in extra {
            url.query_pairs_mut().append_pair(k, v);
        }
        url
    };
    for (extra, error) in [
        (&[("tenant", "demo"), ("prompt", "none")][..], "login_required"),
        // No tenant and no hint: no chooser either.
        (&[("prompt", "none")][..], "login_required"),
        (&[("tenant", "nosuch")][..], "invalid_request"),
        (&[("tenant", "demo"), ("prompt", "none login")][..], "invalid_request"),
        // A nonce it could not have back is refused, not dropped.
        (
            &[("tenant", "demo"), ("nonce", &"n".repeat(2049))][..],
            "invalid_request",
        ),
        (
            &[
                ("tenant", "demo"),
                ("code_challenge", "x"),
                ("code_challenge_method", "plain"),
            ][..],
            "invalid_request",
        ),
    ] {
        let resp = app.client.get(ask(extra)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{extra:?}");
        let to = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        assert_eq!(to.host_str(), Some("app.example.test"));
        let q: std::collections::BTreeMap<_, _> = to.query_pairs().into_owned().collect();
        assert_eq!(q.get("error").map(String::as_str), Some(error), "{extra:?}: {to}");
        assert_eq!(q.get("state").map(String::as_str), Some("st"));
        assert!(!q.contains_key("code"));
    }
}

/// With two active connections and none named, the SSO session decides: a
/// person signed in to one app is signed in to the next without a chooser,
/// also silently; without a session the person chooses, and prompt=none
/// (which shows no page) answers `login_required`.
#[tokio::test]
async fn with_two_connections_the_sso_session_chooses_and_prompt_none_shows_no_chooser() {
    use crate::revocation::{authorize_url, register, submit_login, Rp};
    let app = dev_app().await;
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/demo/connections",
            Some(serde_json::json!({"id": "dev2", "kind": "dev"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (one, two) = (register(&app, "one").await, register(&app, "two").await);
    let verifier = portcullis::tokens::random_token(32);
    let authorize = |rp: &Rp, extra: &[(&str, &str)]| {
        let mut url = authorize_url(&app, rp, "demo", &verifier);
        url.query_pairs_mut().extend_pairs(extra);
        url
    };
    let at_app = |u: &url::Url| u.host_str().is_some_and(|h| h.ends_with(".example.test"));
    let param = |u: &url::Url, name: &str| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());

    let mut browser = Browser::new();
    let login = browser
        .get_until(&authorize(&one, &[("connection", "dev2")]), &at_app)
        .await
        .page();
    let back = submit_login(&mut browser, &one, &login, "ann@demo.example")
        .await
        .stopped();
    assert!(param(&back, "code").is_some(), "{back}");
    for extra in [&[][..], &[("prompt", "none")][..]] {
        let back = browser.get_until(&authorize(&two, extra), &at_app).await.stopped();
        assert!(param(&back, "code").is_some(), "{extra:?}: {back}");
    }

    let mut fresh = Browser::new();
    let chooser = fresh.get_until(&authorize(&two, &[]), &at_app).await.page();
    assert_eq!(chooser.status, StatusCode::OK);
    assert!(chooser.body.contains("dev2"), "{}", chooser.body);
    let back = fresh
        .get_until(&authorize(&two, &[("prompt", "none")]), &at_app)
        .await
        .stopped();
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"), "{back}");
}

/// `id_token_hint` at `/authorize` (OIDC Core 3.1.2.1) names who the app
/// expects: only that user's SSO session answers it (with prompt=none,
/// another user's session is `login_required`; without, the person signs
/// in again); the hint's tenant is the request's when it names none; a
/// hint that is not an ID token of this service, an access token included,
/// or one for another tenant than `tenant`, is `invalid_request`. It used
/// to be ignored, so a silent request for one user was answered with a
/// code for whoever was signed in.
#[tokio::test]
async fn id_token_hint_decides_whose_session_may_answer() {
    use crate::revocation::{redeem, register, sign_in, submit_login};
    let app = dev_app().await;
    let rp = register(&app, "hinted").await;
    let mut ann = Browser::new();
    let ann_tokens = redeem(
        &app,
        &rp,
        &sign_in(&app, &mut ann, &rp, "demo", "ann@demo.example").await,
    )
    .await;
    let ann_hint = ann_tokens.body["id_token"].as_str().unwrap().to_owned();
    let ann_access = ann_tokens.body["access_token"].as_str().unwrap().to_owned();
    let mut bo = Browser::new();
    let bo_tokens = redeem(&app, &rp, &sign_in(&app, &mut bo, &rp, "demo", "bo@demo.example").await).await;
    let bo_hint = bo_tokens.body["id_token"].as_str().unwrap().to_owned();

    let verifier = portcullis::tokens::random_token(32);
    let at_app = |u: &url::Url| u.host_str() == Some("hinted.example.test");
    let param = |u: &url::Url, name: &str| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let ask = |tenant: Option<&str>, extra: &[(&str, &str)]| {
        let mut url = app.url("/authorize");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &rp.client_id)
            .append_pair("redirect_uri", rp.redirect.as_str())
            .append_pair("scope", "openid")
            .append_pair(
                "code_challenge",
                &portcullis::tokens::sha256_base64url(verifier.as_bytes()),
            )
            .append_pair("code_challenge_method", "S256");
        if let Some(t) = tenant {
            url.query_pairs_mut().append_pair("tenant", t);
        }
        url.query_pairs_mut().extend_pairs(extra);
        url
    };

    // Ann's own hint, silently, in Ann's browser: her session answers, also
    // with the tenant taken from the hint alone.
    for tenant in [Some("demo"), None] {
        let back = ann
            .get_until(
                &ask(tenant, &[("prompt", "none"), ("id_token_hint", &ann_hint)]),
                &at_app,
            )
            .await
            .stopped();
        assert!(param(&back, "code").is_some(), "{tenant:?}: {back}");
    }
    // Bo's hint in Ann's browser: not Ann's session.
    let back = ann
        .get_until(
            &ask(Some("demo"), &[("prompt", "none"), ("id_token_hint", &bo_hint)]),
            &at_app,
        )
        .await
        .stopped();
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"), "{back}");
    assert!(param(&back, "code").is_none());
    // Without prompt=none the person is asked to sign in (the dev IdP's
    // form). Signing in there as Ann again, not the hinted Bo, gets the app
    // `login_required` and no code (it used to get a code for Ann), and is
    // a failed sign-in with its reason; signing in as Bo gets Bo's code.
    let page = ann
        .get_until(&ask(Some("demo"), &[("id_token_hint", &bo_hint)]), &at_app)
        .await
        .page();
    assert!(page.url.path().starts_with("/dev/"), "{}", page.url);
    let back = submit_login(&mut ann, &rp, &page, "ann@demo.example").await.stopped();
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"), "{back}");
    assert_eq!(
        param(&back, "error_description").as_deref(),
        Some("Signed in as another user than id_token_hint names."),
        "{back}"
    );
    assert!(param(&back, "code").is_none(), "{back}");
    let failed = app
        .state
        .broker
        .failed_sign_ins(&portcullis::ids::TenantId::parse("demo").unwrap())
        .await
        .unwrap();
    assert!(
        failed.iter().any(|f| f.reason == "login.not_the_hinted_user"),
        "{failed:?}"
    );
    let page = ann
        .get_until(&ask(Some("demo"), &[("id_token_hint", &bo_hint)]), &at_app)
        .await
        .page();
    let back = submit_login(&mut ann, &rp, &page, "bo@demo.example").await.stopped();
    let code = crate::revocation::Code {
        code: param(&back, "code").expect("a code for Bo"),
        verifier: verifier.clone(),
    };
    let bo_again = redeem(&app, &rp, &code).await;
    let claims = |t: &str| {
        let payload = t.split('.').nth(1).unwrap();
        let json = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()
    };
    assert_eq!(
        claims(bo_again.body["id_token"].as_str().unwrap())["sub"],
        claims(&bo_hint)["sub"]
    );

    // Not an ID token of ours, an access token, or another tenant's hint.
    let mut forged = ann_hint.clone();
    forged.pop();
    forged.push(if ann_hint.ends_with('A') { 'B' } else { 'A' });
    let not_ours = "id_token_hint is not an ID token of this service.";
    for (tenant, hint, why) in [
        (Some("demo"), forged.as_str(), not_ours),
        (Some("demo"), "not-a-token", not_ours),
        (Some("demo"), ann_access.as_str(), not_ours),
        (
            Some("other"),
            ann_hint.as_str(),
            "id_token_hint names another organization than tenant.",
        ),
    ] {
        let back = ann
            .get_until(&ask(tenant, &[("prompt", "none"), ("id_token_hint", hint)]), &at_app)
            .await
            .stopped();
        assert_eq!(
            param(&back, "error").as_deref(),
            Some("invalid_request"),
            "{tenant:?} {back}"
        );
        assert_eq!(param(&back, "error_description").as_deref(), Some(why), "{back}");
    }
}

/// Anyone can send an IdP's answer naming no pending login: each is
/// refused (`callback.unknown_login`) and logged, but the tenant's audit
/// log, which keeps a bounded number of events, gets one per connection,
/// reason and minute, so a flood does not push its admin changes out.
#[tokio::test]
async fn answers_without_a_pending_login_are_audited_once_a_minute() {
    let clock = portcullis::clock::ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2031-05-01T10:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let app = spawn_app(AppOptions {
        dev: true,
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    let flood = || async {
        for i in 0..5 {
            let url = app.url(&format!("/dev/demo/dev/callback?state=made-up-{i}"));
            let resp = app.client.get(url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            assert!(resp.text().await.unwrap().contains("callback.unknown_login"));
        }
    };
    let audited = || async {
        app.tenant_audit("demo", "signin.failed")
            .await
            .iter()
            .filter(|e| e["reason"] == "callback.unknown_login")
            .count()
    };
    flood().await;
    assert_eq!(audited().await, 1);
    clock.advance(chrono::Duration::seconds(61));
    flood().await;
    assert_eq!(audited().await, 2);
}

/// The audit log keeps a bounded number of events, and anyone can cause
/// failed sign-ins: each answer sent to a disabled connection is refused
/// and audited (`callback.connection_not_active`). Admin changes and
/// security events keep their bound apart, so a flood of the one never
/// pushes the other out (in memory and over Redis, whose trim is a script).
#[tokio::test]
async fn a_flood_of_failed_sign_ins_never_pushes_an_admins_change_out_of_the_audit_log() {
    fn small_log(s: &mut portcullis::config::Settings) {
        s.audit.max_events = 10;
    }
    for redis in [false, true] {
        let app = spawn_app(AppOptions {
            dev: true,
            tweak: Some(small_log),
            redis_url: redis.then(crate::support::redis::url),
            redis_prefix: redis.then(crate::support::redis::prefix),
            ..AppOptions::default()
        })
        .await;
        let (status, body) = app
            .admin(
                reqwest::Method::POST,
                "/admin/v1/tenants/demo/connections/dev/disable",
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for i in 0..25 {
            let url = app.url(&format!("/dev/demo/dev/callback?state=made-up-{i}"));
            let resp = app.client.get(url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "redis: {redis}");
            assert!(resp.text().await.unwrap().contains("callback.connection_not_active"));
        }
        assert_eq!(
            app.tenant_audit("demo", "connection.status_changed").await.len(),
            1,
            "redis: {redis}"
        );
        let (status, log) = app
            .admin(reqwest::Method::GET, "/admin/v1/tenants/demo/audit?limit=200", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{log}");
        let events = log["events"].as_array().unwrap();
        let refused = events
            .iter()
            .filter(|e| e["reason"] == "callback.connection_not_active")
            .count();
        assert_eq!(refused, 10, "the newest ten security events stay (redis: {redis})");
        assert!(events.len() <= 20, "{} events", events.len());
    }
}

/// Spec details of `/authorize`: a request object by reference is
/// `request_uri_not_supported` and by value `request_not_supported` (OIDC
/// Core 3.1.2.6); an empty `state` comes back exactly as sent, empty (RFC
/// 6749 4.1.2); `prompt=none` never ends on a page, also where the tenant
/// has no connection that could sign anyone in (`login_required`).
#[tokio::test]
async fn authorize_answers_request_objects_empty_state_and_silent_requests_as_the_specs_say() {
    use crate::revocation::{authorize_url, dev_app, register};
    let app = dev_app().await;
    app.create_tenant("empty", "Empty", &[]).await;
    let rp = register(&app, "spec").await;
    let verifier = portcullis::tokens::random_token(32);
    let at_app = |u: &url::Url| u.host_str() == Some("spec.example.test");
    let param = |u: &url::Url, name: &str| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let ask = |tenant: &str, extra: &[(&str, &str)]| {
        let mut url = authorize_url(&app, &rp, tenant, &verifier);
        url.query_pairs_mut().extend_pairs(extra);
        url
    };
    let mut browser = Browser::new();
    for (extra, error) in [
        (
            ("request_uri", "https://spec.example.test/ro"),
            "request_uri_not_supported",
        ),
        (("request", "eyJhbGciOiJub25lIn0.e30."), "request_not_supported"),
    ] {
        let back = browser.get_until(&ask("demo", &[extra]), &at_app).await.stopped();
        assert_eq!(param(&back, "error").as_deref(), Some(error), "{back}");
    }
    let back = browser
        .get_until(&ask("empty", &[("prompt", "none"), ("state", "")]), &at_app)
        .await
        .stopped();
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"), "{back}");
    assert_eq!(param(&back, "state").as_deref(), Some(""), "{back}");
}

/// An answer from a browser that does not hold the binding of the pending
/// login it names is refused (`callback.browser_mismatch`), as often as it
/// is sent, and leaves the login alone: the browser that started it still
/// finishes, and only then is the login used up (`callback.unknown_login`).
/// With the edge's peek at the login (throttling on) and without it
/// (throttling off: the handler reads the login itself and consumes it
/// only once the browser passed). Before, the first such answer ended the
/// login of the browser that started it.
#[tokio::test]
async fn an_answer_from_another_browser_leaves_the_login_to_the_browser_that_started_it() {
    fn unthrottled(s: &mut portcullis::config::Settings) {
        s.throttle.enabled = false;
    }
    for tweak in [None, Some(unthrottled as fn(&mut portcullis::config::Settings))] {
        let app = spawn_app(AppOptions {
            dev: true,
            tweak,
            ..AppOptions::default()
        })
        .await;
        let mut started = Browser::new();
        let login = started.get(&app.url("/demo/login")).await;
        let form = login.form(None);
        let is_callback = |u: &url::Url| u.path().ends_with("/callback") && u.path().starts_with("/dev/");
        let callback = started.submit_until(&login, &form, &is_callback).await.stopped();
        for _ in 0..2 {
            let page = Browser::new().get(&callback).await;
            assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
            assert!(
                page.body.contains("<code>callback.browser_mismatch</code>"),
                "{}",
                page.body
            );
        }
        let done = started.get(&callback).await;
        assert_eq!(
            done.status,
            StatusCode::OK,
            "throttled: {}: {}",
            tweak.is_none(),
            done.body
        );
        assert!(done.url.path().starts_with("/demo/callback"), "{}", started.trail());
        let again = started.get(&callback).await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.body);
        assert!(
            again.body.contains("<code>callback.unknown_login</code>"),
            "{}",
            again.body
        );
    }
}

/// A 10,000-character `client_id` or `state` from a browser or an app is
/// refused with its reason, never looked up as a key nor stored: in a URL
/// the edge answers 414 `request.url_too_long`; posted to `/authorize`, a
/// state is `invalid_request` to the app (`authorize.param_too_long`) and a
/// client id an unknown app; posted to `/token`, `invalid_client`.
#[tokio::test]
async fn ten_thousand_character_client_ids_and_states_are_refused() {
    let app = dev_app().await;
    let redirect = url::Url::parse("https://app.example.test/cb").unwrap();
    app.create_client("app", "App", &[&redirect], false).await;
    let long = "x".repeat(10_000);
    let form = |client_id: &str, state: &str| {
        vec![
            ("response_type", "code".to_owned()),
            ("client_id", client_id.to_owned()),
            ("redirect_uri", redirect.to_string()),
            ("scope", "openid".to_owned()),
            ("tenant", "demo".to_owned()),
            ("state", state.to_owned()),
        ]
    };

    let mut in_url = app.url("/authorize");
    in_url.query_pairs_mut().extend_pairs(form("app", &long));
    let resp = app.client.get(in_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);
    assert!(resp.text().await.unwrap().contains("request.url_too_long"));

    let resp = app
        .client
        .post(app.url("/authorize"))
        .form(&form("app", &long))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.host_str(), Some("app.example.test"), "{to}");
    let q: std::collections::BTreeMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"), "{to}");
    assert!(q.get("error_description").is_some_and(|d| d.contains("state")), "{to}");

    let resp = app
        .client
        .post(app.url("/authorize"))
        .form(&form(&long, "st"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("location").is_none());

    let resp = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "demo.x"),
            ("client_id", long.as_str()),
            ("client_secret", "s"),
            ("redirect_uri", redirect.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");
}
