//! What protects a person in a browser beyond the sign-in itself: the
//! browser session follows the injected clock (a manual clock really keeps
//! and really expires sessions), logout only the user can trigger (an ID
//! token hint naming this browser's session, or a confirmation form with a
//! single-use CSRF token), and the security headers on every kind of page.

use base64::Engine as _;
use chrono::Duration;
use portcullis::clock::ManualClock;
use reqwest::{Method, StatusCode};
use sha2::Digest as _;
use url::Url;

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Page};
use crate::support::gateway::spawn_with_public_url;
use crate::support::html_form::decode_entities;

/// A manual clock years away from the wall clock.
fn far_clock() -> ManualClock {
    ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2040-06-01T12:00:00Z")
            .unwrap()
            .to_utc(),
    )
}

async fn dev_app(clock: Option<ManualClock>) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        clock,
        ..AppOptions::default()
    })
    .await
}

/// Signs `browser` in at the demo app through the dev IdP as `email`;
/// returns the demo's signed-in page.
async fn demo_sign_in(app: &TestApp, browser: &mut Browser, email: &str) -> Page {
    let login = browser.get(&app.url("/demo/login")).await;
    assert!(
        login.url.path().starts_with("/dev/"),
        "expected the dev IdP, got {}",
        login.url
    );
    let done = browser.fill_and_submit(&login, None, &[("email", email)]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.url.path().starts_with("/demo/callback"), "{}", browser.trail());
    done
}

/// Whether `browser`'s next demo sign-in is answered from the SSO session
/// (no trip to the dev IdP).
async fn has_sso(app: &TestApp, browser: &mut Browser) -> bool {
    browser.clear_history();
    let page = browser.get(&app.url("/demo/login")).await;
    let reused = page.url.path().starts_with("/demo/callback");
    assert_eq!(
        reused,
        !browser.trail().contains("/dev/demo/dev/login"),
        "{}",
        browser.trail()
    );
    reused
}

/// The demo page's sign-out link (with `id_token_hint`).
fn logout_link(page: &Page) -> Url {
    let start = page.body.find("href=\"").unwrap();
    let hrefs: Vec<&str> = page.body[start..]
        .split("href=\"")
        .filter_map(|h| h.split('"').next())
        .collect();
    let href = hrefs
        .iter()
        .find(|h| h.contains("/logout?"))
        .unwrap_or_else(|| panic!("no sign-out link: {}", page.body));
    Url::parse(&decode_entities(href)).unwrap()
}

fn assert_reason(page: &Page, status: u16, reason: &str) {
    assert_eq!(page.status.as_u16(), status, "{}", page.body);
    assert!(
        page.body.contains(&format!("<code>{reason}</code>")),
        "reason {reason} not on the page: {}",
        page.body
    );
}

// ---------------------------------------------------------------- sessions --

#[tokio::test]
async fn under_a_manual_clock_the_sso_session_is_really_reused_and_expires_with_the_clock() {
    let clock = far_clock();
    let app = dev_app(Some(clock.clone())).await;
    let lifetime = app.state.session.ttl;
    let mut browser = Browser::new();
    demo_sign_in(&app, &mut browser, "ada@demo.example").await;

    // The browser session and the SSO session really exist: the second app
    // sign-in gets its code without the IdP.
    assert!(has_sso(&app, &mut browser).await, "SSO session not reused");

    // Just before the lifetime ends (counted from the last save), still there.
    clock.advance(Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap() - 5));
    assert!(has_sso(&app, &mut browser).await, "expired too early");

    // Past the lifetime on the manual clock (the wall clock barely moved):
    // gone, the next sign-in goes to the IdP.
    clock.advance(Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap() + 1));
    assert!(
        !has_sso(&app, &mut browser).await,
        "the session outlived its lifetime on the injected clock"
    );
}

#[tokio::test]
async fn a_browser_session_that_cannot_be_saved_fails_the_request_closed() {
    let redis = crate::support::redis::RedisServer::start();
    let app = spawn_app(AppOptions {
        dev: true,
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;
    let mut browser = Browser::new();
    demo_sign_in(&app, &mut browser, "ada@demo.example").await;
    redis.stop();
    let page = browser.get(&app.url("/demo/login")).await;
    assert_reason(&page, 503, "session.save_failed");
}

// ------------------------------------------------------------------ logout --

#[tokio::test]
async fn a_hint_naming_this_browsers_session_signs_out_at_once_by_sid_or_by_sub() {
    let app = dev_app(None).await;
    let mut browser = Browser::new();
    let first = logout_link(&demo_sign_in(&app, &mut browser, "ada@demo.example").await);

    // Same sid: signed out without a question, back to the app.
    let out = browser.get(&first).await;
    assert_eq!(out.url, app.url("/demo"), "{}", browser.trail());
    assert!(!has_sso(&app, &mut browser).await);

    // Signed in again (a new sid, same user): the old hint's sub names it.
    demo_sign_in(&app, &mut browser, "ada@demo.example").await;
    let out = browser.get(&first).await;
    assert_eq!(out.url, app.url("/demo"), "{}", browser.trail());
    assert!(!has_sso(&app, &mut browser).await);
}

/// An expired ID token of an earlier session of the same user does not
/// sign this browser out at once: anyone who ever got hold of one of the
/// user's ID tokens could otherwise sign them out at will. It asks first
/// (with the CSRF-protected form), as for another user's hint; the same
/// hint before it expired ended the session at once.
#[tokio::test]
async fn an_expired_hint_of_an_earlier_session_asks_first() {
    let clock = crate::support::local::far_clock();
    let app = dev_app(Some(clock.clone())).await;
    let mut browser = Browser::new();
    let old = logout_link(&demo_sign_in(&app, &mut browser, "ada@demo.example").await);
    let out = browser.get(&old).await;
    assert_eq!(out.url, app.url("/demo"), "{}", browser.trail());

    // Signed in again later (a new sid), once the old hint has expired.
    clock.advance(chrono::Duration::hours(2));
    demo_sign_in(&app, &mut browser, "ada@demo.example").await;
    let ask = browser
        .get_from_until(&Url::parse("https://evil.example.test/").unwrap(), &old, &|_| false)
        .await
        .page();
    assert_eq!(ask.status, StatusCode::OK, "{}", ask.body);
    let form = ask.form(Some("logout"));
    assert!(form.field("csrf").is_some_and(|c| c.len() >= 32), "{}", ask.body);
    assert!(
        has_sso(&app, &mut browser).await,
        "signed out by an expired hint without being asked"
    );
}

/// A hint names one tenant's session: signing out of it leaves the same
/// browser's session at another tenant alone (ending every session is what
/// the confirmation form is for).
#[tokio::test]
async fn a_hint_ends_only_the_session_of_its_own_tenant_in_this_browser() {
    use crate::revocation::{create_dev_connection, register, sign_in, start};
    use crate::support::browser::Nav;
    let app = dev_app(None).await;
    app.create_tenant("acme", "Acme", &[]).await;
    create_dev_connection(&app, "acme").await;
    let rp = register(&app, "other").await;
    let mut browser = Browser::new();
    sign_in(&app, &mut browser, &rp, "acme", "ann@acme.example").await;
    let hint = logout_link(&demo_sign_in(&app, &mut browser, "ada@demo.example").await);

    let out = browser.get(&hint).await;
    assert_eq!(out.url, app.url("/demo"), "{}", browser.trail());
    assert!(
        !has_sso(&app, &mut browser).await,
        "the hint's own tenant is signed out"
    );
    let (nav, _) = start(&app, &mut browser, &rp, "acme").await;
    assert!(
        matches!(nav, Nav::Stopped(_)),
        "the other tenant's SSO session was ended"
    );
}

#[tokio::test]
async fn a_hint_of_another_browsers_session_or_no_hint_asks_first_with_a_csrf_token() {
    let app = dev_app(None).await;
    let mut ada = Browser::new();
    let ada_logout = logout_link(&demo_sign_in(&app, &mut ada, "ada@demo.example").await);
    let mut bob = Browser::new();
    demo_sign_in(&app, &mut bob, "bob@demo.example").await;

    // Ada's sign-out link opened in Bob's browser (a cross-site link): a question.
    let ask = bob
        .get_from_until(&Url::parse("https://evil.example.test/").unwrap(), &ada_logout, &|_| {
            false
        })
        .await
        .page();
    assert_eq!(ask.status, StatusCode::OK);
    let form = ask.form(Some("logout"));
    assert_eq!(form.method, "POST");
    assert!(form.field("csrf").is_some_and(|c| c.len() >= 32), "{}", ask.body);
    assert!(has_sso(&app, &mut bob).await, "Bob was signed out without being asked");

    // No hint at all: a question too; confirming signs out.
    let ask = bob.get(&app.url("/logout")).await;
    let form = ask.form(Some("logout"));
    let done = bob.submit(&ask, &form).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("You are signed out"), "{}", done.body);
    assert!(!has_sso(&app, &mut bob).await);
    // Ada is still signed in in her browser.
    assert!(has_sso(&app, &mut ada).await);
}

/// A browser signed in nowhere gets no question and no session. A
/// cookieless `GET /logout` used to store a browser session of the full
/// lifetime for the confirmation form's CSRF token, from a route no rate
/// limit counts; now nothing is stored (no cookie is set) and an app's
/// registered return address is followed at once. A cookieless POST is
/// still refused for its missing token.
#[tokio::test]
async fn a_logout_from_a_browser_signed_in_nowhere_asks_nothing_and_stores_no_session() {
    let app = dev_app(None).await;
    // The demo app's sign-out link (its hint, its registered return address).
    let mut signed_in = Browser::new();
    let link = logout_link(&demo_sign_in(&app, &mut signed_in, "ada@demo.example").await);
    let back: Url = link
        .query_pairs()
        .find(|(k, _)| k == "post_logout_redirect_uri")
        .map(|(_, v)| Url::parse(&v).unwrap())
        .expect("the demo's link names its return address");
    let cookieless = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let plain = cookieless.get(app.url("/logout")).send().await.unwrap();
    assert!(plain.headers().get("set-cookie").is_none(), "{:?}", plain.headers());
    assert_eq!(plain.status(), StatusCode::OK);
    let body = plain.text().await.unwrap();
    assert!(body.contains("You are signed out") && !body.contains("<form"), "{body}");

    let from_app = cookieless.get(link.clone()).send().await.unwrap();
    assert!(
        from_app.headers().get("set-cookie").is_none(),
        "{:?}",
        from_app.headers()
    );
    assert!(from_app.status().is_redirection(), "{}", from_app.status());
    let location = Url::parse(from_app.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location[..url::Position::AfterPath], back[..url::Position::AfterPath]);

    // An unregistered return address is still refused, session or not.
    let mut evil = link.clone();
    let pairs: Vec<(String, String)> = link
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "post_logout_redirect_uri" {
                "https://evil.example.test/".into()
            } else {
                v
            };
            (k.into_owned(), v.into_owned())
        })
        .collect();
    evil.query_pairs_mut().clear().extend_pairs(pairs);
    let refused = cookieless.get(evil).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("<code>logout.redirect_not_registered</code>"));

    let post = cookieless
        .post(app.url("/logout"))
        .form(&[("x", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::FORBIDDEN);
    assert!(post.headers().get("set-cookie").is_none(), "{:?}", post.headers());
    assert!(post.text().await.unwrap().contains("<code>logout.csrf_missing</code>"));

    // The signed-in browser still is.
    assert!(has_sso(&app, &mut signed_in).await);
}

#[tokio::test]
async fn a_logout_post_without_the_right_csrf_token_is_refused_and_the_token_is_single_use() {
    let app = dev_app(None).await;
    let mut b = Browser::new();
    demo_sign_in(&app, &mut b, "ada@demo.example").await;
    let logout = app.url("/logout");
    let post = |fields: Vec<(String, String)>| fields;

    // A cross-site auto-posted form (no token; no Lax cookie comes along).
    let evil = Url::parse("https://evil.example.test/").unwrap();
    let page = b.post_form_from(&evil, &logout, &post(vec![]), &|_| false).await.page();
    assert_reason(&page, 403, "logout.csrf_missing");
    assert!(has_sso(&app, &mut b).await);

    // Same-site, no token.
    let ex = b.send(Method::POST, &logout, Some(&[]), Some(&app.base)).await;
    assert_eq!(ex.status, StatusCode::FORBIDDEN);
    assert!(ex.body.contains("<code>logout.csrf_missing</code>"), "{}", ex.body);

    // A wrong token, with a real question pending.
    let ask = b.get(&logout).await;
    let mut form = ask.form(Some("logout"));
    let good = form.field("csrf").unwrap().to_owned();
    form.set("csrf", &"A".repeat(good.len()));
    let page = b.submit(&ask, &form).await;
    assert_reason(&page, 403, "logout.csrf_mismatch");
    // The right token, after the failed attempt spent it.
    form.set("csrf", &good);
    let page = b.submit(&ask, &form).await;
    assert_reason(&page, 403, "logout.csrf_mismatch");
    // The right token posted cross-site: no cookie, nothing to match.
    let ask = b.get(&logout).await;
    let form = ask.form(Some("logout"));
    let page = b.post_form_from(&evil, &logout, &form.fields, &|_| false).await.page();
    assert_reason(&page, 403, "logout.csrf_mismatch");
    assert!(has_sso(&app, &mut b).await, "a refused sign-out signed out");
}

// ----------------------------------------------------------------- headers --

/// The policy's directives by name.
fn csp(headers: &reqwest::header::HeaderMap) -> std::collections::BTreeMap<String, String> {
    let v = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("no CSP in {headers:?}"))
        .to_str()
        .unwrap();
    v.split(';')
        .filter_map(|d| {
            let d = d.trim();
            let (name, value) = d.split_once(' ').unwrap_or((d, ""));
            (!name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn sha256_source(text: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

/// The text between `<tag>` and `</tag>` on the page.
fn inline(body: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = body.find(&open).unwrap_or_else(|| panic!("no <{tag}> in {body}")) + open.len();
    let end = body[start..].find(&format!("</{tag}>")).unwrap() + start;
    body[start..end].to_owned()
}

/// Asserts the headers every response has, and the CSP of an HTML page:
/// nothing loads, no framing, no base, styles only by the hash of the page's
/// own style element, no script unless `script` (then by its hash); returns
/// the form-action directive.
pub(crate) fn assert_page_headers(headers: &reqwest::header::HeaderMap, body: &str, script: bool) -> String {
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(headers.get("strict-transport-security").is_none(), "HSTS over http");
    let p = csp(headers);
    assert_eq!(p["default-src"], "'none'", "{p:?}");
    assert_eq!(p["frame-ancestors"], "'none'", "{p:?}");
    assert_eq!(p["base-uri"], "'none'", "{p:?}");
    assert_eq!(p["style-src"], sha256_source(&inline(body, "style")), "{p:?}");
    if script {
        assert_eq!(p["script-src"], sha256_source(&inline(body, "script")), "{p:?}");
    } else {
        assert!(!p.contains_key("script-src"), "{p:?}");
        assert!(!body.contains("<script"), "{body}");
    }
    p["form-action"].clone()
}

#[tokio::test]
async fn every_kind_of_page_carries_its_content_security_policy_and_the_common_headers() {
    let app = dev_app(None).await;
    let mut b = Browser::new();

    // Error page (the fallback 404): no form at all.
    let page = b.get(&app.url("/no/such/page")).await;
    assert_eq!(assert_page_headers(&page.headers, &page.body, false), "'none'");

    // The home-realm chooser: its form goes to /authorize (self).
    let mut authorize = app.url("/authorize");
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "demo")
        .append_pair("redirect_uri", app.url("/demo/callback").as_str())
        .append_pair("scope", "openid")
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(b"v".repeat(43).as_slice()),
        )
        .append_pair("code_challenge_method", "S256");
    let page = b.get(&authorize).await;
    assert!(page.body.contains("Work email"), "{}", page.body);
    let fa = assert_page_headers(&page.headers, &page.body, false);
    assert!(fa.split(' ').any(|s| s == "'self'"), "{fa}");

    // Dev pages: the demo home (no form) and the dev IdP's form (self).
    let page = b.get(&app.url("/demo")).await;
    assert_eq!(assert_page_headers(&page.headers, &page.body, false), "'none'");
    let page = b.get(&app.url("/demo/login")).await;
    assert!(page.url.path().starts_with("/dev/"));
    assert_eq!(assert_page_headers(&page.headers, &page.body, false), "'self'");
    let done = b.fill_and_submit(&page, None, &[("email", "ada@demo.example")]).await;
    assert_eq!(assert_page_headers(&done.headers, &done.body, false), "'none'");

    // The logout confirmation: its form goes to /logout (self).
    let page = b.get(&app.url("/logout")).await;
    let fa = assert_page_headers(&page.headers, &page.body, false);
    assert!(fa.split(' ').any(|s| s == "'self'"), "{fa}");
    assert!(!fa.contains("https:"), "{fa}");

    // JSON and redirects: the common headers and a policy allowing nothing.
    for path in ["/jwks", "/.well-known/openid-configuration", "/demo/login"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(csp(h)["default-src"], "'none'", "{path}");
        assert_eq!(csp(h)["frame-ancestors"], "'none'", "{path}");
    }
}

#[tokio::test]
async fn hsts_is_sent_on_every_response_when_the_public_url_is_https() {
    let gw = spawn_with_public_url(
        AppOptions {
            dev: true,
            ..AppOptions::default()
        },
        |port| format!("https://localhost:{port}"),
    )
    .await;
    for path in ["/demo", "/jwks", "/nowhere", "/demo/login"] {
        let resp = gw.app.client.get(gw.at(path)).send().await.unwrap();
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains",
            "{path}"
        );
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff", "{path}");
    }
}

// --------------------------------------------------- the scripted browser --

#[tokio::test]
async fn the_scripted_browser_sends_cookies_by_the_same_site_rules_of_chromium() {
    use axum::http::header::{HeaderMap, LOCATION, SET_COOKIE};
    use axum::response::AppendHeaders;
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = |headers: HeaderMap| async move {
        let mut names: Vec<String> = headers
            .get("cookie")
            .map(|c| {
                c.to_str()
                    .unwrap()
                    .split("; ")
                    .map(|kv| kv.split('=').next().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.join(",")
    };
    let server = axum::Router::new()
        .route(
            "/set",
            get(|| async {
                AppendHeaders([
                    (SET_COOKIE, "lax=1; SameSite=Lax; Path=/"),
                    (SET_COOKIE, "strict=1; SameSite=Strict; Path=/"),
                    (SET_COOKIE, "plain=1; Path=/"),
                ])
            }),
        )
        .route("/echo", get(echo).post(echo))
        .route(
            "/see-other",
            axum::routing::post(move || async move {
                (
                    StatusCode::SEE_OTHER,
                    [(LOCATION, format!("http://127.0.0.1:{port}/echo"))],
                )
            }),
        )
        .route(
            "/bounce",
            get(move || async move { (StatusCode::FOUND, [(LOCATION, format!("http://127.0.0.1:{port}/echo"))]) }),
        );
    tokio::spawn(async move { axum::serve(listener, server).await.unwrap() });
    let at = |host: &str, path: &str| Url::parse(&format!("http://{host}:{port}{path}")).unwrap();
    let same = Url::parse("http://127.0.0.1:1/page").unwrap(); // another port, same site
    let cross = Url::parse("http://localhost:1/page").unwrap();

    let mut b = Browser::new();
    b.get(&at("127.0.0.1", "/set")).await;
    let echo_at = at("127.0.0.1", "/echo");
    let sent = |b: &mut Browser| b.history.last().unwrap().cookies_sent.clone();

    // Typed, and same-site (ports do not matter): every cookie.
    assert_eq!(b.get(&echo_at).await.body, "lax,plain,strict");
    b.send(Method::POST, &echo_at, Some(&[]), Some(&same)).await;
    assert_eq!(sent(&mut b).len(), 3);
    // A cross-site form POST: no Lax cookie (nor one without SameSite), no Strict.
    let ex = b.send(Method::POST, &echo_at, Some(&[]), Some(&cross)).await;
    assert_eq!(ex.body, "", "cookies went with a cross-site POST");
    // A cross-site top-level GET: Lax (and default) cookies, not Strict.
    let ex = b.send(Method::GET, &echo_at, None, Some(&cross)).await;
    assert_eq!(ex.body, "lax,plain");
    // A redirect chain through another site makes the request cross-site.
    let page = b.get(&at("localhost", "/bounce")).await;
    assert_eq!(page.url, echo_at);
    assert_eq!(page.body, "lax,plain");
    assert!(!b.history.last().unwrap().same_site);
    // A cross-site POST answered 303 (the SAML ACS): the POST carries no
    // cookie, the GET it leads to carries the Lax ones.
    b.clear_history();
    let page = b
        .post_form_from(&cross, &at("127.0.0.1", "/see-other"), &[], &|_| false)
        .await
        .page();
    assert_eq!(page.body, "lax,plain");
    assert!(b.history[0].cookies_sent.is_empty(), "{:?}", b.history);
}
