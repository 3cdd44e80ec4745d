//! Access to APIs: forward auth behind a real nginx (`auth_request`), RFC 8693
//! token exchange with per-tenant exchange rules, and the
//! `portcullis::authorizer` tower layer. Provider-side, so the built-in dev
//! IdP signs users in.

use crate::support::admin::members;
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Nav};
use crate::support::nginx::{Nginx, Protected};
use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis::clock::ManualClock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use url::Url;

const FILES: &str = "https://files.example.test";
const REPORTS: &str = "https://reports.example.test";
const HOME: &str = "https://home.example.test";
const REDIRECT: &str = "https://app.example.test/cb";
const VERIFIER: &str = "a-verifier-that-is-long-enough-to-be-valid-for-pkce-0123456789";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn far_clock() -> ManualClock {
    ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2040-06-01T12:00:00Z")
            .unwrap()
            .to_utc(),
    )
}

/// Adds an exchange rule to tenant `demo` through the admin API.
async fn add_rule(app: &TestApp, rule: Value) {
    let (status, body) = app
        .admin(Method::POST, "/admin/v1/tenants/demo/exchange-rules", Some(rule))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A dev gateway with three APIs and the app `web` (confidential, may
/// exchange tokens); returns it with web's secret.
async fn world(clock: Option<ManualClock>) -> (TestApp, String) {
    let app = spawn_app(AppOptions {
        dev: true,
        clock,
        ..AppOptions::default()
    })
    .await;
    for (id, scopes, routes) in [
        (FILES, &["files:read", "files:write"][..], json!([])),
        (REPORTS, &["reports:read"][..], json!([])),
        (
            HOME,
            &["home:read"][..],
            json!([{"path": "/home/${sub}/**", "methods": ["GET"], "scopes": ["home:read"]}]),
        ),
    ] {
        let scopes: Vec<Value> = scopes.iter().map(|s| json!({"name": s})).collect();
        let (status, body) = app
            .admin(
                Method::POST,
                "/admin/v1/resource-servers",
                Some(json!({"identifier": id, "scopes": scopes, "routes": routes})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let secret = register(
        &app,
        "web",
        json!({
            "allowed_scopes": ["files:read", "reports:read", "home:read"],
            "grant_types": ["authorization_code", "refresh_token", EXCHANGE],
        }),
    )
    .await;
    (app, secret)
}

async fn register(app: &TestApp, id: &str, extra: Value) -> String {
    let mut body = json!({"client_id": id, "redirect_uris": [REDIRECT], "public": false});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = app.admin(Method::POST, "/admin/v1/clients", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["client_secret"].as_str().unwrap().to_owned()
}

/// Signs `email` in at the dev IdP through `/authorize` (tenant demo) and
/// redeems the code; returns the token response.
async fn sign_in(app: &TestApp, client: &str, secret: &str, email: &str, params: &[(&str, &str)]) -> Value {
    let code = code_for(app, client, email, params).await;
    let (status, body) = token(
        app,
        client,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Signs `email` in at the dev IdP through `/authorize` (tenant demo) for
/// `client`; returns the code, not redeemed.
async fn code_for(app: &TestApp, client: &str, email: &str, params: &[(&str, &str)]) -> String {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("tenant", "demo")
        .append_pair("login_hint", email)
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(VERIFIER.as_bytes()),
        )
        .append_pair("code_challenge_method", "S256")
        .extend_pairs(params);
    let mut browser = Browser::new();
    let stop = |u: &Url| u.host_str() == Some("app.example.test");
    let back = match browser.get_until(&url, &stop).await {
        Nav::Stopped(u) => u,
        Nav::Page(login) => {
            let mut form = login.form(None);
            form.set("email", email);
            browser.submit_until(&login, &form, &stop).await.stopped()
        }
    };
    let q: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    q.get("code").unwrap_or_else(|| panic!("no code: {q:?}")).clone()
}

async fn token(app: &TestApp, client: &str, secret: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(app.url("/token"))
        .basic_auth(client, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The claims of a JWT.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn at(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_owned()
}

/// The tower authorizer of the files API, for this gateway, on `clock`.
fn files_authorizer(app: &TestApp, clock: &ManualClock) -> portcullis::authorizer::Authorizer {
    use portcullis::authorizer::{Authorizer, AuthorizerConfig};
    Authorizer::new(
        AuthorizerConfig::new(&app.issuer(), FILES).unwrap(),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

/// The handler behind an authorizer in the tests.
async fn ok() -> &'static str {
    "ok"
}

/// A small backend that echoes what nginx passed on.
async fn backend() -> String {
    async fn echo(uri: axum::http::Uri, headers: HeaderMap) -> axum::Json<Value> {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        axum::Json(json!({
            "path": uri.path(), "sub": h("x-portcullis-sub"), "tenant": h("x-portcullis-tenant"),
            "scopes": h("x-portcullis-scopes"),
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(echo);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr.to_string()
}

fn proxy(app: &TestApp, backend: &str) -> Nginx {
    Nginx::start(
        &app.base,
        backend,
        &[
            Protected {
                prefix: "/files/",
                resource: FILES,
                scope: Some("files:read"),
            },
            Protected {
                prefix: "/files-admin/",
                resource: FILES,
                scope: Some("files:write"),
            },
            Protected {
                prefix: "/home/",
                resource: HOME,
                scope: None,
            },
        ],
    )
}

struct Answer {
    status: StatusCode,
    reason: String,
    challenge: String,
    body: Value,
}

async fn call(method: Method, url: &str, bearer: Option<&str>) -> Answer {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (reason, challenge) = (h("x-portcullis-reason"), h("www-authenticate"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    Answer {
        status,
        reason,
        challenge,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn refused(a: &Answer, status: StatusCode, reason: &str) {
    assert_eq!(
        (a.status, a.reason.as_str()),
        (status, reason),
        "{} {}",
        a.challenge,
        a.body
    );
}

#[tokio::test]
async fn nginx_lets_the_right_audience_and_scope_through_and_refuses_the_rest() {
    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    let nginx = proxy(&app, &backend().await);
    let files = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await;
    let files_at = at(&files);
    let sub = claims(&files_at)["sub"].as_str().unwrap().to_owned();

    let ok = call(Method::GET, &nginx.url("/files/report.pdf"), Some(&files_at)).await;
    assert_eq!(ok.status, StatusCode::OK, "{} {}", ok.reason, ok.challenge);
    assert_eq!(ok.body["path"], "/files/report.pdf");
    assert_eq!(ok.body["sub"], sub.as_str(), "identity passed downstream");
    assert_eq!(ok.body["tenant"], "demo");
    assert!(
        ok.body["scopes"].as_str().unwrap().contains("files:read"),
        "{}",
        ok.body
    );

    // No token: 401 with a bare challenge (RFC 6750 §3.1).
    let none = call(Method::GET, &nginx.url("/files/report.pdf"), None).await;
    refused(&none, StatusCode::UNAUTHORIZED, "forward_auth.no_token");
    assert_eq!(none.challenge, "Bearer realm=\"portcullis\"");
    // Not a token of ours.
    let junk = call(Method::GET, &nginx.url("/files/a"), Some("not.a.token")).await;
    refused(&junk, StatusCode::UNAUTHORIZED, "token.invalid");
    assert!(junk.challenge.contains("error=\"invalid_token\""), "{}", junk.challenge);
    // Right audience, wrong scope.
    let admin = call(Method::GET, &nginx.url("/files-admin/a"), Some(&files_at)).await;
    refused(&admin, StatusCode::FORBIDDEN, "forward_auth.missing_scope");
    // nginx passes a 403 on without the challenge; the gateway's own answer has it (RFC 6750 §3.1).
    let direct = call(
        Method::GET,
        app.url(&format!(
            "/forward-auth?resource={}&scope=files%3Awrite",
            url::form_urlencoded::byte_serialize(FILES.as_bytes()).collect::<String>()
        ))
        .as_str(),
        Some(&files_at),
    )
    .await;
    refused(&direct, StatusCode::FORBIDDEN, "forward_auth.missing_scope");
    assert_eq!(
        direct.challenge,
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"files:write\""
    );
    // Another resource server's token.
    let reports = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid reports:read"), ("resource", REPORTS)],
    )
    .await;
    let other = call(Method::GET, &nginx.url("/files/a"), Some(&at(&reports))).await;
    refused(&other, StatusCode::UNAUTHORIZED, "forward_auth.wrong_audience");
    // The app's own token (aud = client id) is no API token either.
    let plain = sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid")]).await;
    let plain = call(Method::GET, &nginx.url("/files/a"), Some(&at(&plain))).await;
    refused(&plain, StatusCode::UNAUTHORIZED, "forward_auth.wrong_audience");

    // Revoked (RFC 7009): refused at once.
    let resp = app
        .client
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", files_at.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let revoked = call(Method::GET, &nginx.url("/files/a"), Some(&files_at)).await;
    refused(&revoked, StatusCode::UNAUTHORIZED, "token.revoked");

    // Expired, on the gateway's clock.
    let fresh = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await;
    let fresh = at(&fresh);
    assert_eq!(
        call(Method::GET, &nginx.url("/files/a"), Some(&fresh)).await.status,
        StatusCode::OK
    );
    clock.advance(chrono::Duration::hours(2));
    let expired = call(Method::GET, &nginx.url("/files/a"), Some(&fresh)).await;
    refused(&expired, StatusCode::UNAUTHORIZED, "token.invalid");
    assert!(expired.challenge.contains("expired"), "{}", expired.challenge);
}

#[tokio::test]
async fn forward_auth_needs_a_registered_resource_and_a_clean_original_uri() {
    let (app, secret) = world(None).await;
    let home = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid home:read"), ("resource", HOME)],
    )
    .await;
    let home = at(&home);
    let sub = claims(&home)["sub"].as_str().unwrap().to_owned();
    let fa = |query: &str| app.url(&format!("/forward-auth{query}")).to_string();
    let missing = call(Method::GET, &fa(""), Some(&home)).await;
    refused(&missing, StatusCode::BAD_REQUEST, "forward_auth.missing_resource");
    let unknown = call(Method::GET, &fa("?resource=https%3A%2F%2Fnope.test"), Some(&home)).await;
    refused(&unknown, StatusCode::BAD_REQUEST, "forward_auth.unknown_resource");

    // The resource has route rules: the original URI decides, and must be sent.
    let q = format!(
        "?resource={}",
        url::form_urlencoded::byte_serialize(HOME.as_bytes()).collect::<String>()
    );
    let no_uri = call(Method::GET, &fa(&q), Some(&home)).await;
    refused(&no_uri, StatusCode::FORBIDDEN, "forward_auth.no_original_uri");
    let ask = |uri: String, method: &'static str| {
        let (app, home, url) = (app.clone(), home.clone(), fa(&q));
        async move {
            let resp = app
                .client
                .get(url)
                .bearer_auth(home)
                .header("x-forwarded-uri", uri)
                .header("x-forwarded-method", method)
                .send()
                .await
                .unwrap();
            let reason = resp.headers()["x-portcullis-reason"].to_str().unwrap().to_owned();
            let sub = resp
                .headers()
                .get("x-portcullis-sub")
                .map(|v| v.to_str().unwrap().to_owned());
            (resp.status(), reason, sub)
        }
    };
    // Traefik's headers work too.
    let (status, reason, got) = ask(format!("/home/{sub}/notes?x=1"), "GET").await;
    assert_eq!((status, reason.as_str()), (StatusCode::OK, "forward_auth.allowed"));
    assert_eq!(got.as_deref(), Some(sub.as_str()));
    for (uri, method, why) in [
        ("/home/someone-else/notes".to_owned(), "GET", "forward_auth.no_route"),
        (format!("/home/{sub}/notes"), "DELETE", "forward_auth.no_route"),
        (format!("/home/{sub}/../someone-else"), "GET", "forward_auth.bad_path"),
        (
            format!("/home/{sub}/%2e%2e/someone-else"),
            "GET",
            "forward_auth.bad_path",
        ),
        (
            format!("/home/{sub}%2F..%2Fsomeone-else"),
            "GET",
            "forward_auth.bad_path",
        ),
        (format!("/home//{sub}"), "GET", "forward_auth.bad_path"),
        // Servlet containers drop a segment's `;` parameters before
        // resolving it: `..;` is `..` there.
        (
            format!("/home/{sub}/..;/someone-else/notes"),
            "GET",
            "forward_auth.bad_path",
        ),
        (
            format!("/home/{sub}/..%3B/someone-else/notes"),
            "GET",
            "forward_auth.bad_path",
        ),
        (format!("/home/{sub};x=1/notes"), "GET", "forward_auth.bad_path"),
        (
            format!("/home/{sub}/%252e%252e/someone-else"),
            "GET",
            "forward_auth.bad_path",
        ),
    ] {
        let (status, reason, got) = ask(uri.clone(), method).await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::FORBIDDEN, why),
            "{method} {uri}"
        );
        assert_eq!(got, None, "no identity on a refusal");
    }
    // Traefik passes the client's own headers on beside its X-Forwarded-*:
    // a client naming another request in X-Original-* is refused, not
    // believed (nor is either family preferred).
    for (client_uri, client_method) in [
        (format!("/home/{sub}/notes"), "DELETE"),
        (format!("/home/{sub}/x"), "GET"),
    ] {
        let resp = app
            .client
            .get(fa(&q))
            .bearer_auth(&home)
            .header("x-forwarded-uri", "/home/someone-else/notes")
            .header("x-forwarded-method", "DELETE")
            .header("x-original-uri", &client_uri)
            .header("x-original-method", client_method)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{client_uri}");
        assert_eq!(
            resp.headers()["x-portcullis-reason"],
            "forward_auth.conflicting_headers"
        );
        assert!(resp.headers().get("x-portcullis-sub").is_none());
    }
    // Envoy ext_authz: the original path appended to the prefix; the
    // resource only from the proxy's header, never from the client's query.
    let envoy = |path: String, resource: Option<&'static str>| {
        let (app, home) = (app.clone(), home.clone());
        async move {
            let mut req = app
                .client
                .get(app.url(&format!("/forward-auth{path}")))
                .bearer_auth(home);
            if let Some(r) = resource {
                req = req.header("x-portcullis-resource", r);
            }
            let resp = req.send().await.unwrap();
            (
                resp.status(),
                resp.headers()["x-portcullis-reason"].to_str().unwrap().to_owned(),
            )
        }
    };
    let (status, reason) = envoy(format!("/home/{sub}/notes?x=1"), Some(HOME)).await;
    assert_eq!((status, reason.as_str()), (StatusCode::OK, "forward_auth.allowed"));
    // Envoy checks with the original method and names none in a header: a
    // DELETE whose client names it a GET is refused, not judged as a GET
    // (the rules allow GET only); a header naming the same method passes.
    for (method, named, expected) in [
        (
            Method::DELETE,
            "GET",
            (StatusCode::BAD_REQUEST, "forward_auth.conflicting_headers"),
        ),
        (Method::GET, "GET", (StatusCode::OK, "forward_auth.allowed")),
    ] {
        for header in ["x-original-method", "x-forwarded-method"] {
            let resp = app
                .client
                .request(method.clone(), app.url(&format!("/forward-auth/home/{sub}/notes")))
                .bearer_auth(&home)
                .header("x-portcullis-resource", HOME)
                .header(header, named)
                .send()
                .await
                .unwrap();
            assert_eq!(
                (resp.status(), resp.headers()["x-portcullis-reason"].to_str().unwrap()),
                expected,
                "{method} named {named} in {header}"
            );
        }
    }
    let (status, reason) = envoy("/home/someone-else/notes".into(), Some(HOME)).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::FORBIDDEN, "forward_auth.no_route")
    );
    let q_home = url::form_urlencoded::byte_serialize(HOME.as_bytes()).collect::<String>();
    let (status, reason) = envoy(format!("/home/{sub}/notes?resource={q_home}"), None).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::BAD_REQUEST, "forward_auth.missing_resource")
    );

    // A resource server's route rules are checked when it is registered.
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/resource-servers",
            Some(json!({"identifier": "https://bad.test", "routes": [{"path": "/a/**/b"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "routes[0].path", "{body}");
}

#[tokio::test]
async fn an_exchanged_token_reaches_the_users_own_path_through_nginx_and_not_another_users() {
    let (app, secret) = world(None).await;
    let nginx = proxy(&app, &backend().await);
    let rule = json!({
        "id": "own-home", "when": {"claim": "groups", "equals": "engineering"},
        "resource": HOME, "scopes": ["home:read", "home:${sub}"], "claims": {"home": "/home/${sub}", "org": "${tenant}"},
    });
    add_rule(&app, rule).await;

    let ann = sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid")]).await;
    let bob = sign_in(&app, "web", &secret, "bob@demo.test", &[("scope", "openid")]).await;
    let ann_sub = claims(&at(&ann))["sub"].as_str().unwrap().to_owned();
    let bob_sub = claims(&at(&bob))["sub"].as_str().unwrap().to_owned();
    assert_ne!(ann_sub, bob_sub);

    let (status, got) = token(
        &app,
        "web",
        &secret,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &at(&ann)),
            ("subject_token_type", ACCESS_TOKEN),
            ("resource", HOME),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(got["token_type"], "Bearer");
    assert!(
        got.get("refresh_token").is_none() && got.get("id_token").is_none(),
        "{got}"
    );
    assert!(got["expires_in"].as_u64().unwrap() <= 300, "short-lived: {got}");
    let scoped = at(&got);
    let c = claims(&scoped);
    assert_eq!(c["aud"], HOME);
    assert_eq!(c["sub"], ann_sub.as_str());
    assert_eq!(c["tenant"], "demo");
    assert_eq!(c["scope"], format!("home:read home:{ann_sub}"));
    assert_eq!(c["home"], format!("/home/{ann_sub}"), "policy variables expanded");
    assert_eq!(c["org"], "demo");

    let own = call(
        Method::GET,
        &nginx.url(&format!("/home/{ann_sub}/notes")),
        Some(&scoped),
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "{} {}", own.reason, own.challenge);
    assert_eq!(own.body["sub"], ann_sub.as_str());
    let other = call(
        Method::GET,
        &nginx.url(&format!("/home/{bob_sub}/notes")),
        Some(&scoped),
    )
    .await;
    refused(&other, StatusCode::FORBIDDEN, "forward_auth.no_route");
    // An encoded slash that nginx decodes into a dot segment never reaches
    // another user's path (`%2e%2e` itself is normalised by the client).
    let sneaky = call(
        Method::GET,
        &nginx.url(&format!("/home/{ann_sub}/..%2f{bob_sub}/notes")),
        Some(&scoped),
    )
    .await;
    refused(&sneaky, StatusCode::FORBIDDEN, "forward_auth.bad_path");
    let write = call(
        Method::POST,
        &nginx.url(&format!("/home/{ann_sub}/notes")),
        Some(&scoped),
    )
    .await;
    refused(&write, StatusCode::FORBIDDEN, "forward_auth.no_route");
    // Ann's own sign-in token is for the app, not for the API.
    let unexchanged = call(
        Method::GET,
        &nginx.url(&format!("/home/{ann_sub}/notes")),
        Some(&at(&ann)),
    )
    .await;
    refused(&unexchanged, StatusCode::UNAUTHORIZED, "forward_auth.wrong_audience");
}

#[tokio::test]
async fn a_rules_scope_template_never_grants_a_scope_the_platform_did_not_allow_the_app() {
    const ADMIN: &str = "https://admin.example.test";
    let (app, _) = world(None).await;
    let scopes = json!([{"name": "admin:read"}, {"name": "demo:admin"}]);
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/resource-servers",
            Some(json!({"identifier": ADMIN, "scopes": scopes})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let grants = json!(["authorization_code", EXCHANGE]);
    let reader = register(
        &app,
        "reader",
        json!({"allowed_scopes": ["admin:read"], "grant_types": grants}),
    )
    .await;
    let admin = register(
        &app,
        "admin",
        json!({"allowed_scopes": ["admin:read", "demo:admin"], "grant_types": grants}),
    )
    .await;
    // `${tenant}:admin` expands to `demo:admin` in tenant demo: a template
    // the tenant's admin may write, naming a scope the platform governs.
    let rule = json!({"id": "t", "resource": ADMIN, "scopes": ["admin:read", "${tenant}:admin", "own:${sub}"]});
    add_rule(&app, rule).await;
    for (client, secret, admin_granted) in [("reader", &reader, false), ("admin", &admin, true)] {
        let signed_in = sign_in(&app, client, secret, "ann@demo.test", &[("scope", "openid")]).await;
        let sub = claims(&at(&signed_in))["sub"].as_str().unwrap().to_owned();
        let (status, got) = token(
            &app,
            client,
            secret,
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &at(&signed_in)),
                ("subject_token_type", ACCESS_TOKEN),
                ("resource", ADMIN),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{client}: {got}");
        let expected = if admin_granted {
            format!("admin:read demo:admin own:{sub}")
        } else {
            format!("admin:read own:{sub}")
        };
        assert_eq!(claims(&at(&got))["scope"], expected, "{client}");
    }
}

/// The provider's reason for refusing an exchange (the HTTP answer carries
/// only the RFC error code).
async fn exchange_reason(app: &TestApp, client: &str, form: &[(&str, &str)]) -> (&'static str, String) {
    let provider = &app.state.provider;
    let client = provider.clients.get(client).await.unwrap().unwrap();
    let get = |k: &str| form.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
    let req = portcullis::provider::grants::TokenRequest {
        grant_type: get("grant_type"),
        subject_token: get("subject_token"),
        subject_token_type: get("subject_token_type"),
        requested_token_type: get("requested_token_type"),
        resource: get("resource"),
        audience: get("audience"),
        actor_token: get("actor_token"),
        scope: get("scope"),
        ..Default::default()
    };
    let e = provider.token(&client, &req).await.unwrap_err();
    (e.reason, e.code.as_str().to_owned())
}

#[tokio::test]
async fn token_exchange_refusals_carry_their_rfc_error_codes() {
    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    let other_secret = register(
        &app,
        "other",
        json!({"allowed_scopes": ["home:read"], "grant_types": ["authorization_code", EXCHANGE]}),
    )
    .await;
    let plain_secret = register(&app, "plain", json!({"allowed_scopes": ["home:read"]})).await;
    add_rule(&app, json!({"id": "finance-files", "when": {"claim": "groups", "equals": "finance"}, "resource": FILES, "scopes": ["files:read"]})).await;
    add_rule(
        &app,
        json!({"id": "everyone-home", "resource": HOME, "scopes": ["home:read"]}),
    )
    .await;
    let ann = at(&sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid")]).await);
    let base = |resource: &'static str, subject: &str| -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", EXCHANGE.to_owned()),
            ("subject_token", subject.to_owned()),
            ("subject_token_type", ACCESS_TOKEN.to_owned()),
            ("resource", resource.to_owned()),
        ]
    };
    let with = |mut f: Vec<(&'static str, String)>, k: &'static str, v: Option<&str>| {
        f.retain(|(n, _)| *n != k);
        if let Some(v) = v {
            f.push((k, v.to_owned()));
        }
        f
    };
    // Everyone of the tenant may reach HOME: the baseline works.
    let ok = base(HOME, &ann);
    let ok_ref: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = token(&app, "web", &secret, &ok_ref).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    type Form = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Form, &str, &str)> = vec![
        // No rule maps Ann (engineering) to FILES: unmapped users get nothing.
        ("web", base(FILES, &ann), "invalid_target", "exchange.no_rule"),
        (
            "web",
            base("https://nope.test", &ann),
            "invalid_target",
            "exchange.unknown_resource",
        ),
        (
            "web",
            with(base(HOME, &ann), "resource", None),
            "invalid_request",
            "exchange.missing_resource",
        ),
        (
            "web",
            with(base(HOME, &ann), "audience", Some(FILES)),
            "invalid_target",
            "exchange.audience_mismatch",
        ),
        (
            "web",
            with(base(HOME, &ann), "subject_token", None),
            "invalid_request",
            "exchange.missing_subject_token",
        ),
        (
            "web",
            with(
                base(HOME, &ann),
                "subject_token_type",
                Some("urn:ietf:params:oauth:token-type:id_token"),
            ),
            "invalid_request",
            "exchange.unsupported_subject_token_type",
        ),
        (
            "web",
            with(base(HOME, &ann), "subject_token_type", None),
            "invalid_request",
            "exchange.missing_subject_token_type",
        ),
        (
            "web",
            with(
                base(HOME, &ann),
                "requested_token_type",
                Some("urn:ietf:params:oauth:token-type:refresh_token"),
            ),
            "invalid_request",
            "exchange.unsupported_requested_token_type",
        ),
        (
            "web",
            with(base(HOME, &ann), "actor_token", Some("x")),
            "invalid_request",
            "exchange.actor_not_supported",
        ),
        ("web", base(HOME, "not.a.token"), "invalid_request", "token.invalid"),
        (
            "web",
            with(base(HOME, &ann), "scope", Some("files:read")),
            "invalid_scope",
            "exchange.no_scope",
        ),
        // A token of `web` exchanged by another app.
        (
            "other",
            base(HOME, &ann),
            "invalid_request",
            "exchange.subject_other_client",
        ),
        // An app that may not use the grant.
        (
            "plain",
            base(HOME, &ann),
            "unauthorized_client",
            "token.grant_not_allowed",
        ),
    ];
    for (client, form, error, reason) in &cases {
        let form_ref: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let secret = match *client {
            "web" => secret.as_str(),
            "other" => other_secret.as_str(),
            _ => plain_secret.as_str(),
        };
        let (status, body) = token(&app, client, secret, &form_ref).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(*error)),
            "{reason}: {body}"
        );
        assert_eq!(
            exchange_reason(&app, client, &form_ref).await,
            (*reason, (*error).to_owned())
        );
    }

    // An unmapped user's refusal is a security event of the tenant.
    let (_, audit) = app.admin(Method::GET, "/admin/v1/tenants/demo/audit", None).await;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.exchange_refused"
                && e["reason"] == "exchange.no_rule"
                && e["type"] == "security"),
        "{audit}"
    );

    // The subject token is checked like any access token on use: revoked...
    let resp = app
        .client
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", ann.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let revoked = base(HOME, &ann);
    let revoked: Vec<(&str, &str)> = revoked.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = token(&app, "web", &secret, &revoked).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(exchange_reason(&app, "web", &revoked).await.0, "token.revoked");
    // ... expired ...
    let fresh = at(&sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid")]).await);
    let exchanged = base(HOME, &fresh);
    let exchanged: Vec<(&str, &str)> = exchanged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = token(&app, "web", &secret, &exchanged).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An exchanged token never outlives its subject token.
    let subject_exp = claims(&fresh)["exp"].as_i64().unwrap();
    assert!(claims(&at(&body))["exp"].as_i64().unwrap() <= subject_exp);
    clock.advance(chrono::Duration::hours(2));
    let (status, body) = token(&app, "web", &secret, &exchanged).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["error_description"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    clock.advance(chrono::Duration::hours(-2));
    // ... and the user still active.
    let subs = claims(&fresh)["sub"].as_str().unwrap().to_owned();
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/demo/users/{subs}/disable"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(exchange_reason(&app, "web", &exchanged).await.0, "token.user_disabled");
}

/// A subject token is accepted on use up to the verification leeway past
/// its `exp`, but it is not exchanged then: the exchanged token's `exp` is
/// capped at the subject's, so it would be issued already expired. At its
/// `exp` and within the leeway after it the exchange is refused
/// (`invalid_request`, `exchange.subject_expired`), on the injected clock;
/// a second before it, the exchanged token lives that second. Before, the
/// expired token was issued with `expires_in` 0.
#[tokio::test]
async fn a_subject_token_at_or_past_its_exp_is_not_exchanged_for_an_expired_token() {
    use portcullis::tokens::LEEWAY_SECS;
    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    add_rule(
        &app,
        json!({"id": "everyone-home", "resource": HOME, "scopes": ["home:read"]}),
    )
    .await;
    let ann = at(&sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid")]).await);
    let subject_exp = claims(&ann)["exp"].as_i64().unwrap();
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", ann.as_str()),
        ("subject_token_type", ACCESS_TOKEN),
        ("resource", HOME),
    ];
    let at_time = |t: i64| clock.set(chrono::DateTime::from_timestamp(t, 0).unwrap());

    at_time(subject_exp - 1);
    let (status, body) = token(&app, "web", &secret, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let exchanged = claims(&at(&body));
    assert_eq!(exchanged["exp"].as_i64(), Some(subject_exp), "{exchanged}");
    assert_eq!(exchanged["iat"].as_i64(), Some(subject_exp - 1), "{exchanged}");
    assert_eq!(body["expires_in"], 1, "{body}");

    for past in [0, 1, LEEWAY_SECS - 1] {
        at_time(subject_exp + past);
        // Still a valid access token on use (the leeway)...
        app.state.provider.check_access_token(&ann).await.unwrap();
        // ... but not exchanged.
        let (status, body) = token(&app, "web", &secret, &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{past} s past exp: {body}"
        );
        assert!(body.get("access_token").is_none(), "{body}");
        assert_eq!(
            exchange_reason(&app, "web", &form).await,
            ("exchange.subject_expired", "invalid_request".to_owned()),
            "{past} s past exp"
        );
    }
}

/// A rule's `email` condition matches only an address the IdP verified and
/// the tenant vouches for (one of its domains), as `email_domain` does: an
/// unverified `ann@demo.test` gets `invalid_target` from a rule naming
/// exactly that address, a verified `bea@demo.example` her token.
#[tokio::test]
async fn an_exchange_rule_on_email_matches_only_a_verified_address() {
    let (app, secret) = world(None).await;
    for (id, email) in [("ann", "ann@demo.test"), ("bea", "bea@demo.example")] {
        add_rule(
            &app,
            json!({"id": id, "when": {"claim": "email", "equals": email}, "resource": HOME, "scopes": ["home:read"]}),
        )
        .await;
    }
    let exchange = |subject: String| {
        vec![
            ("grant_type", EXCHANGE.to_owned()),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN.to_owned()),
            ("resource", HOME.to_owned()),
        ]
    };
    let ann = at(&sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid email")]).await);
    let form = exchange(ann);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = token(&app, "web", &secret, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_target")),
        "{body}"
    );
    assert_eq!(
        exchange_reason(&app, "web", &form).await,
        ("exchange.no_rule", "invalid_target".to_owned())
    );
    let bea = at(&sign_in(&app, "web", &secret, "bea@demo.example", &[("scope", "openid email")]).await);
    let form = exchange(bea);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = token(&app, "web", &secret, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// RFC 8693 §5: a public app cannot authenticate, so it may not exchange
/// tokens, even its own and even with the grant in a record the admin API
/// would no longer accept (stored here through the registry).
#[tokio::test]
async fn a_public_app_may_not_exchange_tokens_whatever_its_record_allows() {
    let (app, _) = world(None).await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "spa", "redirect_uris": [REDIRECT], "public": true, "allowed_scopes": ["home:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut spa = Arc::unwrap_or_clone(app.state.provider.clients.get("spa").await.unwrap().unwrap());
    spa.grant_types
        .push(portcullis::provider::clients::GrantType::parse(EXCHANGE).unwrap());
    app.state.provider.clients.put(&spa).await.unwrap();
    add_rule(
        &app,
        json!({"id": "everyone-home", "resource": HOME, "scopes": ["home:read"]}),
    )
    .await;

    // The public app's own access token, from its own code (PKCE, no secret).
    let code = code_for(&app, "spa", "ann@demo.test", &[("scope", "openid")]).await;
    let redeemed = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "spa"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(redeemed.status(), StatusCode::OK);
    let own = at(&redeemed.json().await.unwrap());

    let form = [
        ("grant_type", EXCHANGE),
        ("client_id", "spa"),
        ("subject_token", own.as_str()),
        ("subject_token_type", ACCESS_TOKEN),
        ("resource", HOME),
    ];
    let resp = app.client.post(app.url("/token")).form(&form).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client")),
        "{body}"
    );
    assert_eq!(
        exchange_reason(&app, "spa", &form).await,
        ("token_exchange.public_client", "unauthorized_client".to_owned())
    );
}

/// An exchanged token carries its subject token's refresh family: revoking
/// the family (here `/revoke` of its refresh token) refuses the exchanged
/// token too (`token.family_revoked`), as it refuses the subject token.
#[tokio::test]
async fn an_exchanged_token_dies_with_its_subject_tokens_refresh_family() {
    let (app, secret) = world(None).await;
    add_rule(
        &app,
        json!({"id": "everyone-home", "resource": HOME, "scopes": ["home:read"]}),
    )
    .await;
    let signed_in = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid offline_access")],
    )
    .await;
    let rt = signed_in["refresh_token"].as_str().unwrap().to_owned();
    let (status, refreshed) = token(
        &app,
        "web",
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let subject = at(&refreshed);
    let (status, body) = token(
        &app,
        "web",
        &secret,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("resource", HOME),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let exchanged = at(&body);
    assert_eq!(claims(&exchanged)["fam"], claims(&subject)["fam"]);
    assert!(claims(&exchanged)["fam"].is_string(), "{}", claims(&exchanged));
    let provider = &app.state.provider;
    assert!(provider.check_access_token(&exchanged).await.is_ok());

    let resp = app
        .client
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", refreshed["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for token in [&subject, &exchanged] {
        assert_eq!(
            provider.check_access_token(token).await.unwrap_err().reason,
            "token.family_revoked"
        );
    }
}

#[tokio::test]
async fn exchange_rules_are_managed_per_tenant_checked_and_audited() {
    let (app, _) = world(None).await;
    let path = "/admin/v1/tenants/demo/exchange-rules";
    let rule = json!({"id": "eng", "when": {"claim": "groups", "equals": "engineering"}, "resource": HOME, "scopes": ["home:read"]});
    let (status, created) = app.admin(Method::POST, path, Some(rule.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "eng");
    let (status, dup) = app.admin(Method::POST, path, Some(rule)).await;
    assert_eq!(
        (status, dup["field"].as_str()),
        (StatusCode::CONFLICT, Some("id")),
        "{dup}"
    );
    for (body, field) in [
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:write"]}),
            "scopes[0]",
        ),
        (
            json!({"id": "x", "resource": "https://nope.test", "scopes": ["read"]}),
            "resource",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:${user}"]}),
            "scopes[0]",
        ),
        // A variable glued to other characters could name another tenant
        // (`files:${tenant}-eu` is `files:acme-eu` for `acme`) or user.
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:${tenant}-eu"]}),
            "scopes[0]",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:eu_${tenant}"]}),
            "scopes[0]",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:${sub}${tenant}"]}),
            "scopes[0]",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:read"], "claims": {"path": "/t/${tenant}2"}}),
            "claims.path",
        ),
        (json!({"id": "x", "resource": HOME, "scopes": []}), "scopes"),
        (json!({"id": "X Y", "resource": HOME, "scopes": ["home:read"]}), "id"),
        (
            json!({"id": "x", "when": {"claim": "role", "equals": "a"}, "resource": HOME, "scopes": ["home:read"]}),
            "when.claim",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:read"], "claims": {"sub": "me"}}),
            "claims.sub",
        ),
        // What the pre-token hook may not set, a rule may not either.
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:read"], "claims": {"email": "ceo@other.test"}}),
            "claims.email",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:read"], "claims": {"connection": "okta"}}),
            "claims.connection",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:read"], "claims": {"acr": "mfa"}}),
            "claims.acr",
        ),
        (
            json!({"id": "x", "resource": HOME, "scopes": ["home:read"], "extra": 1}),
            "extra",
        ),
    ] {
        let (status, problem) = app.admin(Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let (status, list) = app.admin(Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["exchange_rules"].as_array().unwrap().len(), 1, "{list}");
    let (status, one) = app.admin(Method::GET, &format!("{path}/eng"), None).await;
    assert_eq!((status, one["resource"].as_str()), (StatusCode::OK, Some(HOME)));
    // A backup holds the rule and the tenant's index of rules.
    let backup = portcullis::backup::export(&app.state.store, app.state.provider.clock.now())
        .await
        .unwrap();
    let backup = serde_json::to_value(&backup).unwrap();
    let names: Vec<(String, String)> = backup["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for wanted in [("t:demo:exchange", "rule:eng"), ("t:demo:exchange", "index")] {
        assert!(
            names.iter().any(|(t, n)| t == wanted.0 && n == wanted.1),
            "{wanted:?} not in {names:?}"
        );
    }
    let (status, _) = app
        .admin(Method::GET, "/admin/v1/tenants/nope/exchange-rules", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.admin(Method::DELETE, &format!("{path}/eng"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.admin(Method::DELETE, &format!("{path}/eng"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A tenant deleted and created again does not inherit its rules.
    let acme = "/admin/v1/tenants/acme/exchange-rules";
    for _ in 0..2 {
        let (status, body) = app
            .admin(
                Method::POST,
                "/admin/v1/tenants",
                Some(json!({"id": "acme", "name": "Acme"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, list) = app.admin(Method::GET, acme, None).await;
        assert_eq!(list["exchange_rules"], json!([]), "{list}");
        let (status, _) = app
            .admin(
                Method::POST,
                acme,
                Some(json!({"id": "all", "resource": HOME, "scopes": ["home:read"]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = app.admin(Method::DELETE, "/admin/v1/tenants/acme", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, audit) = app.admin(Method::GET, "/admin/v1/tenants/demo/audit", None).await;
    assert_eq!(status, StatusCode::OK);
    let actions = members(&audit, "events", "action");
    assert!(
        actions.contains(&"exchange_rule.created") && actions.contains(&"exchange_rule.deleted"),
        "{actions:?}"
    );
}

/// Exchange rules are bound to their tenant's incarnation. A deletion whose
/// purge failed left its rules in the store, and a tenant created again
/// under the same id inherited them: its users got tokens as the old
/// tenant's rules allowed. Now such a leftover is not applied, listed, read
/// or deleted, and a rule created under its id replaces it. A rule from
/// before rules were stamped counts only if it is not older than the tenant.
#[tokio::test]
async fn exchange_rules_left_by_a_deleted_tenant_are_not_its_successors() {
    let (app, secret) = world(Some(far_clock())).await;
    let demo = portcullis::ids::TenantId::parse("demo").unwrap();
    let tenant = app.state.tenants.get(&demo).await.unwrap().unwrap();
    let store = &app.state.store;
    let rule_key = |id: &str| portcullis::store::Key::tenant("demo", "exchange", format!("rule:{id}"));
    // Writes a rule as an earlier version or an earlier tenant left it.
    let leave = |id: &'static str, (resource, scope): (&str, &str), incarnation: Option<&str>, at| {
        let mut rule = json!({"id": id, "resource": resource, "scopes": [scope], "created_at": at});
        if let Some(inc) = incarnation {
            rule["tenant_incarnation"] = json!(inc);
        }
        let key = rule_key(id);
        async move {
            store
                .put(&key, &serde_json::to_vec(&rule).unwrap(), None)
                .await
                .unwrap();
            let index = portcullis::store::Key::tenant("demo", "exchange", "index");
            store.set_add(&index, id, None).await.unwrap();
        }
    };
    let (home, files) = ((HOME, "home:read"), (FILES, "files:read"));
    let created: chrono::DateTime<chrono::Utc> = tenant.created_at;
    // Left by the tenant's predecessor: stamped with its incarnation, or
    // written before rules were stamped (so before this tenant was created).
    leave("old-home", home, Some("an-earlier-incarnation"), created).await;
    leave("older-home", home, None, created - chrono::Duration::hours(1)).await;
    // Written by this tenant before rules were stamped: still its own.
    leave("own-files", files, None, created + chrono::Duration::minutes(1)).await;

    let ann = at(&sign_in(&app, "web", &secret, "ann@demo.test", &[("scope", "openid")]).await);
    let form = |resource: &'static str| {
        [
            ("grant_type", EXCHANGE),
            ("subject_token", ann.as_str()),
            ("subject_token_type", ACCESS_TOKEN),
            ("resource", resource),
        ]
    };
    assert_eq!(
        exchange_reason(&app, "web", &form(HOME)).await,
        ("exchange.no_rule", "invalid_target".to_owned())
    );
    let (status, got) = token(&app, "web", &secret, &form(FILES)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(claims(&at(&got))["scope"], "files:read");

    let path = "/admin/v1/tenants/demo/exchange-rules";
    let (_, list) = app.admin(Method::GET, path, None).await;
    assert_eq!(members(&list, "exchange_rules", "id"), ["own-files"], "{list}");
    for (method, id) in [
        (Method::GET, "old-home"),
        (Method::GET, "older-home"),
        (Method::DELETE, "old-home"),
    ] {
        let (status, body) = app.admin(method.clone(), &format!("{path}/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {id}: {body}");
    }

    // A rule created under a leftover's id replaces it, for this tenant.
    let rule = json!({"id": "old-home", "resource": HOME, "scopes": ["home:read"]});
    let (status, body) = app.admin(Method::POST, path, Some(rule.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stored: Value = serde_json::from_slice(&store.get(&rule_key("old-home")).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["tenant_incarnation"], json!(tenant.incarnation), "{stored}");
    let (status, got) = token(&app, "web", &secret, &form(HOME)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let (status, dup) = app.admin(Method::POST, path, Some(rule)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
}

#[tokio::test]
async fn the_tower_authorizer_checks_tokens_and_refetches_the_jwks_for_a_new_kid_at_a_limited_rate() {
    use portcullis::authorizer::Identity;
    use tower::ServiceExt as _;

    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    let authorizer = files_authorizer(&app, &clock);
    async fn me(axum::Extension(who): axum::Extension<Identity>) -> axum::Json<Value> {
        axum::Json(json!({"sub": who.sub, "tenant": who.tenant, "scopes": who.scopes}))
    }
    let api: axum::Router = axum::Router::new()
        .route(
            "/read",
            axum::routing::get(me).layer(authorizer.require(["files:read"])),
        )
        .route(
            "/write",
            axum::routing::get(me).layer(authorizer.require(["files:write"])),
        );
    let ask = |path: &'static str, token: Option<String>| {
        let api = api.clone();
        async move {
            let mut req = axum::http::Request::builder().uri(path);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let resp = api.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
            let reason = resp
                .headers()
                .get("x-portcullis-reason")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            (
                status,
                reason,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let files = at(&sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await);
    let (status, _, body) = ask("/read", Some(files.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], claims(&files)["sub"]);
    assert_eq!(body["tenant"], "demo");
    assert_eq!(authorizer.jwks_fetches(), 1);
    let (status, _, _) = ask("/read", Some(files.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(authorizer.jwks_fetches(), 1, "keys are cached");

    let refused = |r: (StatusCode, Option<String>, Value), status: StatusCode, reason: &str| {
        assert_eq!((r.0, r.1.as_deref()), (status, Some(reason)), "{}", r.2);
    };
    refused(
        ask("/read", None).await,
        StatusCode::UNAUTHORIZED,
        "authorizer.no_token",
    );
    refused(
        ask("/write", Some(files.clone())).await,
        StatusCode::FORBIDDEN,
        "authorizer.missing_scope",
    );
    let reports = at(&sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid reports:read"), ("resource", REPORTS)],
    )
    .await);
    refused(
        ask("/read", Some(reports)).await,
        StatusCode::UNAUTHORIZED,
        "authorizer.wrong_audience",
    );
    // One character in the middle of the signature changed: still base64url, wrong signature.
    let (signed, signature) = files.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = signature.chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let forged = format!("{signed}.{}", sig.into_iter().collect::<String>());
    refused(
        ask("/read", Some(forged)).await,
        StatusCode::UNAUTHORIZED,
        "authorizer.bad_signature",
    );

    // Two rotations: the active key is one the authorizer has never seen.
    for _ in 0..2 {
        let (status, body) = app.admin(Method::POST, "/admin/v1/keys/rotate", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let new_kid = at(&sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await);
    // Within the refetch interval of the first fetch: no new fetch, refused.
    refused(
        ask("/read", Some(new_kid.clone())).await,
        StatusCode::UNAUTHORIZED,
        "authorizer.unknown_kid",
    );
    assert_eq!(authorizer.jwks_fetches(), 1, "refetch rate-limited");
    clock.advance(chrono::Duration::seconds(31));
    let (status, _, body) = ask("/read", Some(new_kid.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(authorizer.jwks_fetches(), 2, "one refetch for the unknown kid");
    // Garbage kids right after do not make it fetch again.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"nope","typ":"at+jwt"}"#);
    let rest = new_kid.split_once('.').unwrap().1;
    refused(
        ask("/read", Some(format!("{header}.{rest}"))).await,
        StatusCode::UNAUTHORIZED,
        "authorizer.unknown_kid",
    );
    assert_eq!(authorizer.jwks_fetches(), 2);
    // Expiry on the injected clock.
    clock.advance(chrono::Duration::hours(2));
    refused(
        ask("/read", Some(new_kid)).await,
        StatusCode::UNAUTHORIZED,
        "authorizer.expired",
    );
}

#[tokio::test]
async fn the_tower_authorizer_answers_known_kids_from_stale_keys_and_fetches_at_most_once_per_interval_while_the_jwks_is_down(
) {
    use crate::support::logs::Captured;
    use axum::response::IntoResponse as _;
    use portcullis::authorizer::{Authorizer, AuthorizerConfig};
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::{Duration, Instant};
    use tower::ServiceExt as _;

    let (logs, _guard) = Captured::start();
    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    // The gateway's JWKS, served by a source that can be made to hang or fail.
    let (serve, hang, fail) = (0, 1, 2);
    let mode = Arc::new(AtomicU8::new(serve));
    let jwks = reqwest::get(format!("{}/jwks", app.issuer()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let source = axum::Router::new().route(
        "/jwks",
        axum::routing::get({
            let mode = mode.clone();
            move || {
                let (mode, jwks) = (mode.load(Ordering::SeqCst), jwks.clone());
                async move {
                    if mode == hang {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    if mode == serve {
                        ([("content-type", "application/json")], jwks).into_response()
                    } else {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, source).await.unwrap() });

    let mut config = AuthorizerConfig::new(&app.issuer(), FILES).unwrap();
    config.jwks_uri = Url::parse(&format!("http://{addr}/jwks")).unwrap();
    config.fetch_timeout = Duration::from_secs(2);
    let authorizer = Authorizer::new(config, Arc::new(clock.clone())).unwrap();
    let api: axum::Router = axum::Router::new().route(
        "/read",
        axum::routing::get(ok).layer(authorizer.require(["files:read"])),
    );
    // Each answer with its reason, whether it challenged, and how long it took.
    let ask = |token: String| {
        let api = api.clone();
        async move {
            let started = Instant::now();
            let req = axum::http::Request::get("/read")
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = api.oneshot(req).await.unwrap();
            let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            let (reason, challenge) = (header("x-portcullis-reason"), header("www-authenticate"));
            (resp.status(), reason, challenge, started.elapsed())
        }
    };
    // `n` requests at once: their answers, slowest last.
    let at_once = |n: usize, token: &str| {
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(ask(token.to_owned()))).collect();
        async move {
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap());
            }
            answers.sort_by_key(|a| a.3);
            answers
        }
    };
    let files = at(&sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await);
    let (status, ..) = ask(files.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(authorizer.jwks_fetches(), 1);

    // The keys go stale while the JWKS hangs: one request fetches (and waits
    // for its timeout); the others are answered from the stale keys at once.
    mode.store(hang, Ordering::SeqCst);
    clock.advance(chrono::Duration::seconds(301));
    let answers = at_once(8, &files).await;
    assert!(answers.iter().all(|a| a.0 == StatusCode::OK), "{answers:?}");
    assert_eq!(authorizer.jwks_fetches(), 2, "one fetch for all: {answers:?}");
    assert!(
        answers[..7].iter().all(|a| a.3 < Duration::from_secs(1)),
        "none waits behind the fetch: {answers:?}"
    );
    assert!(!logs.with_reason("authorizer.jwks_unavailable").is_empty());
    // Within the refetch interval of that failed fetch: no fetch, no wait.
    let answers = at_once(4, &files).await;
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::OK && a.3 < Duration::from_secs(1)),
        "{answers:?}"
    );
    assert_eq!(authorizer.jwks_fetches(), 2, "rate-limited");
    // An unknown kid meanwhile is refused without a fetch.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"nope","typ":"at+jwt"}"#);
    let garbage = format!("{header}.{}", files.split_once('.').unwrap().1);
    let (status, reason, _, took) = ask(garbage).await;
    assert_eq!(
        (status, reason.as_deref()),
        (StatusCode::UNAUTHORIZED, Some("authorizer.unknown_kid"))
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(authorizer.jwks_fetches(), 2, "rate-limited");

    // Past the interval, one more attempt (failing at once); the stale keys
    // still serve within one more cache TTL.
    mode.store(fail, Ordering::SeqCst);
    clock.advance(chrono::Duration::seconds(31));
    let answers = at_once(4, &files).await;
    assert!(answers.iter().all(|a| a.0 == StatusCode::OK), "{answers:?}");
    assert_eq!(authorizer.jwks_fetches(), 3);
    // Beyond that grace the keys are not used: an outage (503, no
    // challenge), not an invalid token; still one attempt per interval.
    clock.advance(chrono::Duration::seconds(300));
    for fetches in [4, 4] {
        let (status, reason, challenge, _) = ask(files.clone()).await;
        assert_eq!(
            (status, reason.as_deref(), challenge),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("authorizer.jwks_unavailable"),
                None
            )
        );
        assert_eq!(authorizer.jwks_fetches(), fetches);
    }
    // The JWKS back: the next attempt restores the keys.
    mode.store(serve, Ordering::SeqCst);
    clock.advance(chrono::Duration::seconds(31));
    let (status, ..) = ask(files).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(authorizer.jwks_fetches(), 5);
}

/// A compact JWS of `header` and `claims` signed by `key` (RSA: RS256; EC:
/// ES256, its signature as JOSE's `r || s`).
fn forge(header: &Value, claims: &Value, key: &openssl::pkey::PKey<openssl::pkey::Private>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key).unwrap();
    let der = signer.sign_oneshot_to_vec(input.as_bytes()).unwrap();
    let signature = if key.id() == openssl::pkey::Id::EC {
        let sig = openssl::ecdsa::EcdsaSig::from_der(&der).unwrap();
        [sig.r().to_vec_padded(32).unwrap(), sig.s().to_vec_padded(32).unwrap()].concat()
    } else {
        der
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// One attempt to pass something else off as an access token: what it
/// tries, the token, and the reason code the tower authorizer and the
/// gateway's own check (in its log) refuse it with.
struct Forgery {
    what: &'static str,
    token: String,
    authorizer: &'static str,
    gateway: &'static str,
}

/// The tokens an attacker can make from a genuine access token, the
/// gateway's public JWKS and keys of its own (`jku`: a JWKS URL it serves),
/// plus the genuine ID and refresh tokens of the same sign-in.
fn forgeries(real: &str, id_token: &str, refresh_token: &str, jwks: &Value, jku: &str) -> Vec<Forgery> {
    use openssl::{bn::BigNum, ec, nid::Nid, pkey::PKey, rsa::Rsa};
    let (header, rest) = real.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256", "the gateway's default key type");
    let kid = header["kid"].as_str().unwrap();
    let claims = claims(real);
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let component =
        |name: &str| BigNum::from_slice(&URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap()).unwrap()).unwrap();
    let public_pem = Rsa::from_public_components(component("n"), component("e"))
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let mine_rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mine_ec =
        PKey::from_ec_key(ec::EcKey::generate(&ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
            .unwrap();
    let mine_jwk = {
        let rsa = mine_rsa.rsa().unwrap();
        json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()), "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec())})
    };
    // The genuine payload and signature under another header.
    let reheaded = |h: Value| format!("{}.{payload}.{signature}", URL_SAFE_NO_PAD.encode(h.to_string()));
    let hs256 = {
        let input = format!(
            "{}.{payload}",
            URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": kid, "typ": "at+jwt"}).to_string())
        );
        let secret = openssl::pkey::PKey::hmac(&public_pem).unwrap();
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &secret).unwrap();
        let mac = signer.sign_oneshot_to_vec(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
    };
    let f = |what, token, authorizer, gateway| Forgery {
        what,
        token,
        authorizer,
        gateway,
    };
    vec![
        f(
            "alg none, no signature",
            format!(
                "{}.{payload}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": kid, "typ": "at+jwt"}).to_string())
            ),
            "authorizer.alg_mismatch",
            "token.alg_mismatch",
        ),
        f(
            "HS256 keyed with the RSA public key's PEM",
            hs256,
            "authorizer.alg_mismatch",
            "token.alg_mismatch",
        ),
        f(
            "ES256 by a key of mine under the RSA key's kid",
            forge(&json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"}), &claims, &mine_ec),
            "authorizer.alg_mismatch",
            "token.alg_mismatch",
        ),
        f(
            "EdDSA header on the RSA key's kid",
            reheaded(json!({"alg": "EdDSA", "kid": kid, "typ": "at+jwt"})),
            "authorizer.alg_mismatch",
            "token.alg_mismatch",
        ),
        f(
            "my own key embedded as jwk, the gateway's kid",
            forge(
                &json!({"alg": "RS256", "kid": kid, "typ": "at+jwt", "jwk": mine_jwk}),
                &claims,
                &mine_rsa,
            ),
            "authorizer.bad_signature",
            "token.bad_signature",
        ),
        f(
            "my own key behind jku and x5u, my kid",
            forge(
                &json!({"alg": "RS256", "kid": "mine", "typ": "at+jwt", "jku": jku, "x5u": jku}),
                &claims,
                &mine_rsa,
            ),
            "authorizer.unknown_kid",
            "token.unknown_kid",
        ),
        f(
            "a kid that reads as a path",
            reheaded(json!({"alg": "RS256", "kid": format!("../{kid}"), "typ": "at+jwt"})),
            "authorizer.unknown_kid",
            "token.unknown_kid",
        ),
        f(
            "crit naming an extension",
            reheaded(json!({"alg": "RS256", "kid": kid, "typ": "at+jwt", "crit": ["exp"], "exp": 1})),
            "authorizer.malformed",
            "token.malformed",
        ),
        f(
            "an ID token (typ JWT)",
            id_token.to_owned(),
            "authorizer.wrong_type",
            "token.wrong_type",
        ),
        f(
            "a refresh token",
            refresh_token.to_owned(),
            "authorizer.malformed",
            "token.malformed",
        ),
    ]
}

/// The gateway's JWKS and a server standing for an attacker's `jku`, with
/// the count of requests it got.
async fn jwks_and_a_jku(app: &TestApp) -> (Value, String, Arc<std::sync::atomic::AtomicUsize>) {
    let jwks: Value = reqwest::get(format!("{}/jwks", app.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let router = axum::Router::new().fallback(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { axum::Json(json!({"keys": []})) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (jwks, format!("http://{addr}/jwks"), hits)
}

#[tokio::test]
async fn the_tower_authorizer_refuses_forged_headers_other_token_types_other_issuers_and_expiry_past_the_leeway() {
    use portcullis::authorizer::{Authorizer, AuthorizerConfig};
    use portcullis::clock::Clock as _;
    use tower::ServiceExt as _;

    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    let signed_in = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read offline_access"), ("resource", FILES)],
    )
    .await;
    let files = at(&signed_in);
    let (jwks, jku, jku_hits) = jwks_and_a_jku(&app).await;
    let authorizer = files_authorizer(&app, &clock);
    // The gateway's keys, but another gateway's issuer.
    let mut elsewhere = AuthorizerConfig::new("https://sso.elsewhere.test", FILES).unwrap();
    elsewhere.jwks_uri = Url::parse(&format!("{}/jwks", app.issuer())).unwrap();
    let elsewhere = Authorizer::new(elsewhere, Arc::new(clock.clone())).unwrap();
    let api = |authorizer: &Authorizer, scope: &'static str| -> axum::Router {
        axum::Router::new().route("/", axum::routing::get(ok).layer(authorizer.require([scope])))
    };
    // Status, reason and challenge of one request.
    let ask = |api: axum::Router, token: Option<String>| async move {
        let mut req = axum::http::Request::get("/");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = api.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        let (reason, challenge) = (header("x-portcullis-reason"), header("www-authenticate"));
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        assert!(
            status == StatusCode::OK || body.is_empty(),
            "a refusal tells nothing more: {body:?}"
        );
        (status, reason.unwrap_or_default(), challenge.unwrap_or_default())
    };
    let invalid = "Bearer realm=\"portcullis\", error=\"invalid_token\"";
    let (status, reason, _) = ask(api(&authorizer, "files:read"), Some(files.clone())).await;
    assert_eq!((status, reason.as_str()), (StatusCode::OK, ""));
    assert_eq!(authorizer.jwks_fetches(), 1);

    for forgery in forgeries(
        &files,
        signed_in["id_token"].as_str().unwrap(),
        signed_in["refresh_token"].as_str().unwrap(),
        &jwks,
        &jku,
    ) {
        let got = ask(api(&authorizer, "files:read"), Some(forgery.token)).await;
        assert_eq!(
            got,
            (
                StatusCode::UNAUTHORIZED,
                forgery.authorizer.to_owned(),
                invalid.to_owned()
            ),
            "{}",
            forgery.what
        );
    }
    assert_eq!(
        jku_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "jku/x5u never fetched"
    );
    assert_eq!(authorizer.jwks_fetches(), 1, "no refetch within the interval");

    // A genuine token of this gateway's keys, for another issuer.
    assert_eq!(
        ask(api(&elsewhere, "files:read"), Some(files.clone())).await,
        (
            StatusCode::UNAUTHORIZED,
            "authorizer.wrong_issuer".to_owned(),
            invalid.to_owned()
        )
    );
    // Scopes are compared exactly: case matters, and no challenge names a
    // token error for a token that is valid.
    assert_eq!(
        ask(api(&authorizer, "FILES:READ"), Some(files.clone())).await,
        (
            StatusCode::FORBIDDEN,
            "authorizer.missing_scope".to_owned(),
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\"".to_owned()
        )
    );
    assert_eq!(
        ask(api(&authorizer, "files:read"), Some(format!("{files} "))).await.0,
        StatusCode::OK,
        "surrounding space is no part of the token"
    );
    // No token at all: a bare challenge (RFC 6750 §3.1); another scheme is none.
    for header in [None, Some("Basic d2ViOnNlY3JldA==".to_owned())] {
        let mut req = axum::http::Request::get("/");
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let resp = api(&authorizer, "files:read")
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["x-portcullis-reason"], "authorizer.no_token");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"portcullis\"");
    }

    // Expiry on the injected clock, with the leeway and not a second more.
    let exp = claims(&files)["exp"].as_i64().unwrap();
    let now = clock.now().timestamp();
    clock.advance(chrono::Duration::seconds(
        exp + portcullis::tokens::LEEWAY_SECS - 1 - now,
    ));
    assert_eq!(
        ask(api(&authorizer, "files:read"), Some(files.clone())).await.0,
        StatusCode::OK,
        "within the leeway"
    );
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        ask(api(&authorizer, "files:read"), Some(files)).await,
        (
            StatusCode::UNAUTHORIZED,
            "authorizer.expired".to_owned(),
            invalid.to_owned()
        )
    );
}

#[tokio::test]
async fn forward_auth_userinfo_and_introspect_refuse_forged_headers_and_other_token_types_as_invalid_tokens() {
    use crate::support::logs::Captured;

    let (logs, _guard) = Captured::start();
    let (app, secret) = world(None).await;
    let signed_in = sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read offline_access"), ("resource", FILES)],
    )
    .await;
    let files = at(&signed_in);
    let (jwks, jku, jku_hits) = jwks_and_a_jku(&app).await;
    let resource = url::form_urlencoded::byte_serialize(FILES.as_bytes()).collect::<String>();
    let forward = app.url(&format!("/forward-auth?resource={resource}&scope=files%3Aread"));
    let genuine = call(Method::GET, forward.as_str(), Some(&files)).await;
    assert_eq!(genuine.status, StatusCode::OK, "{}", genuine.reason);

    for forgery in forgeries(
        &files,
        signed_in["id_token"].as_str().unwrap(),
        signed_in["refresh_token"].as_str().unwrap(),
        &jwks,
        &jku,
    ) {
        let what = forgery.what;
        let seen = logs.with_reason(forgery.gateway).len();
        let a = call(Method::GET, forward.as_str(), Some(&forgery.token)).await;
        refused(&a, StatusCode::UNAUTHORIZED, "token.invalid");
        assert!(
            a.challenge
                .starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""),
            "{what}: {}",
            a.challenge
        );
        assert_eq!(a.body["error"], "invalid_token", "{what}");
        let resp = app
            .client
            .get(app.url("/userinfo"))
            .bearer_auth(&forgery.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert!(
            logs.with_reason(forgery.gateway).len() >= seen + 2,
            "{what}: refused as {}",
            forgery.gateway
        );
        // A refresh token is introspected as what it is; none of the others is active.
        if forgery.token != signed_in["refresh_token"].as_str().unwrap() {
            let resp = app
                .client
                .post(app.url("/introspect"))
                .basic_auth("web", Some(&secret))
                .form(&[("token", forgery.token.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{what}");
            assert_eq!(resp.json::<Value>().await.unwrap(), json!({"active": false}), "{what}");
        }
    }
    assert_eq!(
        jku_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "jku/x5u never fetched"
    );

    // A user disabled is refused at once, with the precise reason; enabled
    // again, the token stays refused: disabling revoked its refresh family.
    let sub = claims(&files)["sub"].as_str().unwrap().to_owned();
    for (action, expected) in [("disable", "token.user_disabled"), ("enable", "token.family_revoked")] {
        let (status, body) = app
            .admin(
                Method::POST,
                &format!("/admin/v1/tenants/demo/users/{sub}/{action}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let a = call(Method::GET, forward.as_str(), Some(&files)).await;
        assert_eq!(a.reason, expected, "{action}: {}", a.challenge);
    }
}

#[tokio::test]
async fn a_clients_own_identity_headers_never_reach_the_backend_through_the_documented_nginx_setup() {
    let (app, secret) = world(None).await;
    let nginx = proxy(&app, &backend().await);
    let user = at(&sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await);
    // An app's own token has no tenant: the answer still carries the tenant
    // header, empty, so a proxy that overrides only the headers an answer
    // has (Envoy) overrides the client's with it.
    let machine = register(
        &app,
        "machine",
        json!({"allowed_scopes": ["files:read"], "default_resource": FILES, "grant_types": ["client_credentials"]}),
    )
    .await;
    let (status, body) = token(&app, "machine", &machine, &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let machine = at(&body);
    let resource = url::form_urlencoded::byte_serialize(FILES.as_bytes()).collect::<String>();
    let direct = app
        .client
        .get(app.url(&format!("/forward-auth?resource={resource}")))
        .bearer_auth(&machine)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    assert_eq!(direct.headers()["x-portcullis-tenant"], "");
    assert_eq!(direct.headers()["x-portcullis-sub"], "machine");

    for (token, tenant) in [(&user, "demo"), (&machine, "")] {
        let (sub, scopes) = (claims(token)["sub"].clone(), claims(token)["scope"].clone());
        let resp = reqwest::Client::new()
            .get(nginx.url("/files/a"))
            .bearer_auth(token)
            .header("x-portcullis-tenant", "victim")
            .header("x-portcullis-sub", "someone-else")
            .header("x-portcullis-scopes", "files:write")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(
            (&seen["sub"], seen["tenant"].as_str(), &seen["scopes"]),
            (&sub, Some(tenant), &scopes),
            "{seen}"
        );
    }
}

#[tokio::test]
async fn the_tower_authorizer_reads_a_scope_bare_or_qualified_with_its_own_api_only() {
    use tower::ServiceExt as _;

    let clock = far_clock();
    let (app, secret) = world(Some(clock.clone())).await;
    let files = at(&sign_in(
        &app,
        "web",
        &secret,
        "ann@demo.test",
        &[("scope", "openid files:read"), ("resource", FILES)],
    )
    .await);
    assert!(
        claims(&files)["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "files:read"),
        "held bare"
    );
    let authorizer = files_authorizer(&app, &clock);
    // As forward auth reads them: `<api>/name` is the scope `name` of that
    // API; a scope of another API, or a name holding a `/`, is not this one.
    for (required, expected) in [
        (format!("{FILES}/files:read"), (StatusCode::OK, None)),
        ("files:read".to_owned(), (StatusCode::OK, None)),
        (
            format!("{REPORTS}/files:read"),
            (StatusCode::FORBIDDEN, Some("authorizer.missing_scope")),
        ),
        (
            format!("{FILES}/x/files:read"),
            (StatusCode::FORBIDDEN, Some("authorizer.missing_scope")),
        ),
        (
            format!("{FILES}/files:write"),
            (StatusCode::FORBIDDEN, Some("authorizer.missing_scope")),
        ),
    ] {
        let api: axum::Router = axum::Router::new().route(
            "/",
            axum::routing::get(ok).layer(authorizer.require([required.clone()])),
        );
        let req = axum::http::Request::get("/")
            .header("authorization", format!("Bearer {files}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = api.oneshot(req).await.unwrap();
        let reason = resp
            .headers()
            .get("x-portcullis-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!((resp.status(), reason.as_deref()), expected, "{required}");
    }
}
