//! Scopes and the APIs they protect: resource servers (admin API and config
//! file), the scopes an app is granted, the access token's audience
//! (RFC 8707), claims released per scope, client_credentials, offline_access
//! and refresh tokens, RFC 8252 redirect URIs, and the prompt values that are
//! refused. Provider-side, so the built-in dev IdP signs users in.

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Nav};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use url::Url;

const BILLING: &str = "https://billing.example.test";
const REPORTS: &str = "https://reports.example.test/api";
const REDIRECT: &str = "https://app.example.test/cb";
const VERIFIER: &str = "a-verifier-that-is-long-enough-to-be-valid-for-pkce-0123456789";

async fn dev_app() -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        ..AppOptions::default()
    })
    .await
}

/// The billing API (billing:read, billing:admin) and the reports API (reports:read).
async fn apis(app: &TestApp) {
    for (id, scopes) in [
        (BILLING, &["billing:read", "billing:admin"][..]),
        (REPORTS, &["reports:read"][..]),
    ] {
        let scopes: Vec<Value> = scopes
            .iter()
            .map(|s| json!({"name": s, "description": format!("{s} access")}))
            .collect();
        let (status, body) = app
            .admin(
                Method::POST,
                "/admin/v1/resource-servers",
                Some(json!({"identifier": id, "name": id, "scopes": scopes})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Registers an app (redirect URI [`REDIRECT`]) with `extra` fields; returns its secret.
async fn register(app: &TestApp, id: &str, public: bool, extra: Value) -> Option<String> {
    let mut body = json!({"client_id": id, "redirect_uris": [REDIRECT], "public": public});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = app.admin(Method::POST, "/admin/v1/clients", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["client_secret"].as_str().map(str::to_owned)
}

/// Runs `/authorize` for `client` (tenant demo, PKCE) with `params`, signing
/// in at the dev IdP when asked; returns the query of the redirect back to the app.
async fn authorize(
    app: &TestApp,
    browser: &mut Browser,
    client: &str,
    params: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("tenant", "demo")
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(VERIFIER.as_bytes()),
        )
        .append_pair("code_challenge_method", "S256")
        .extend_pairs(params);
    let stop = |u: &Url| u.host_str() == Some("app.example.test");
    let back = match browser.get_until(&url, &stop).await {
        Nav::Stopped(u) => u,
        Nav::Page(login) => {
            assert!(login.url.path().starts_with("/dev/"), "{}: {}", login.url, login.body);
            let form = login.form(None);
            browser.submit_until(&login, &form, &stop).await.stopped()
        }
    };
    back.query_pairs().into_owned().collect()
}

/// A POST to `/token` (client_secret_basic when `secret` is given, else public).
async fn token(app: &TestApp, client: &str, secret: Option<&str>, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut fields: Vec<(&str, &str)> = form.to_vec();
    let mut req = app.client.post(app.url("/token"));
    match secret {
        Some(s) => req = req.basic_auth(client, Some(s)),
        None => fields.push(("client_id", client)),
    }
    let resp = req.form(&fields).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Signs in with `params` and redeems the code; returns the token response.
async fn sign_in(app: &TestApp, client: &str, secret: Option<&str>, params: &[(&str, &str)]) -> Value {
    let q = authorize(app, &mut Browser::new(), client, params).await;
    let code = q.get("code").unwrap_or_else(|| panic!("no code: {q:?}"));
    let (status, body) = token(
        app,
        client,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The claims of a JWT (the signature is checked by the flow tests).
fn claims(jwt: &Value) -> Value {
    let payload = jwt.as_str().unwrap().split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn userinfo(app: &TestApp, access_token: &Value) -> (StatusCode, Value) {
    let resp = app
        .client
        .get(app.url("/userinfo"))
        .bearer_auth(access_token.as_str().unwrap())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn unknown_and_unallowed_scopes_are_dropped_and_the_access_token_is_for_the_api() {
    let app = dev_app().await;
    apis(&app).await;
    let secret = register(
        &app,
        "billing-app",
        false,
        json!({"allowed_scopes": ["billing:read"], "default_resource": BILLING}),
    )
    .await;
    let got = sign_in(
        &app,
        "billing-app",
        secret.as_deref(),
        &[("scope", "openid billing:read billing:admin reports:read no-such-scope")],
    )
    .await;
    // RFC 6749 §3.3: the granted scope is returned.
    assert_eq!(got["scope"], "openid billing:read", "{got}");
    let at = claims(&got["access_token"]);
    assert_eq!(at["aud"], BILLING, "{at}");
    assert_eq!(at["scope"], "openid billing:read");
    assert_eq!(at["client_id"], "billing-app");
    // The ID token stays the app's.
    assert_eq!(claims(&got["id_token"])["aud"], "billing-app");
}

#[tokio::test]
async fn without_a_resource_no_api_scope_is_granted_and_the_audience_is_the_client() {
    let app = dev_app().await;
    apis(&app).await;
    let secret = register(
        &app,
        "multi",
        false,
        json!({"allowed_scopes": ["billing:read", "reports:read"]}),
    )
    .await;
    let plain = sign_in(&app, "multi", secret.as_deref(), &[("scope", "openid billing:read")]).await;
    assert_eq!(plain["scope"], "openid");
    assert_eq!(claims(&plain["access_token"])["aud"], "multi");

    // RFC 8707: the resource names the API; only its scopes are granted.
    let reports = sign_in(
        &app,
        "multi",
        secret.as_deref(),
        &[("scope", "openid billing:read reports:read"), ("resource", REPORTS)],
    )
    .await;
    assert_eq!(reports["scope"], "openid reports:read");
    assert_eq!(claims(&reports["access_token"])["aud"], REPORTS);
}

#[tokio::test]
async fn a_resource_the_app_may_not_use_is_invalid_target() {
    let app = dev_app().await;
    apis(&app).await;
    let secret = register(
        &app,
        "billing-app",
        false,
        json!({"allowed_scopes": ["billing:read"], "default_resource": BILLING}),
    )
    .await;
    let mut browser = Browser::new();
    for (resource, why) in [
        (REPORTS, "may not obtain tokens for that resource"),
        ("https://unknown.example.test", "not a registered resource server"),
        ("not a uri", "not a registered resource server"),
    ] {
        let q = authorize(
            &app,
            &mut browser,
            "billing-app",
            &[("scope", "openid"), ("resource", resource), ("state", "st")],
        )
        .await;
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_target"),
            "{resource}: {q:?}"
        );
        assert!(q["error_description"].contains(why), "{resource}: {q:?}");
        assert_eq!(q.get("state").map(String::as_str), Some("st"));
        assert!(!q.contains_key("code"));
    }
    // At the token endpoint, a resource other than the granted one is refused too.
    let q = authorize(&app, &mut browser, "billing-app", &[("scope", "openid billing:read")]).await;
    let (status, body) = token(
        &app,
        "billing-app",
        secret.as_deref(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("resource", REPORTS),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_target", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not the one this grant is for"),
        "{body}"
    );
}

#[tokio::test]
async fn claims_are_released_only_for_the_scopes_that_ask_for_them() {
    let app = dev_app().await;
    let secret = register(&app, "claims", false, json!({})).await;
    let identity_claims = ["email", "email_verified", "name", "given_name", "family_name", "groups"];
    for (scope, expected) in [
        ("openid", &[][..]),
        ("openid email", &["email", "email_verified"][..]),
        ("openid profile", &["name", "given_name", "family_name"][..]),
        ("openid groups", &["groups"][..]),
        ("openid email profile groups", &identity_claims[..]),
    ] {
        let got = sign_in(&app, "claims", secret.as_deref(), &[("scope", scope)]).await;
        let id = claims(&got["id_token"]);
        let (status, info) = userinfo(&app, &got["access_token"]).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        for c in identity_claims {
            let want = expected.contains(&c);
            assert_eq!(id.get(c).is_some(), want, "ID token, scope {scope:?}, claim {c}: {id}");
            assert_eq!(
                info.get(c).is_some(),
                want,
                "userinfo, scope {scope:?}, claim {c}: {info}"
            );
        }
        assert!(id["sub"].is_string() && info["sub"] == id["sub"]);
    }
}

/// OpenID Connect Core 5.3: `/userinfo` answers the access token of an
/// OpenID Connect sign-in. A refresh may narrow the scope (RFC 6749 §6);
/// an access token refreshed without `openid` is for its API only:
/// `/userinfo` answers 403 `insufficient_scope` (RFC 6750), in the
/// challenge too, and logs `userinfo.no_openid_scope`, while the token of
/// the sign-in itself is still answered. Before, any access token about a
/// user was answered.
#[tokio::test]
async fn userinfo_refuses_an_access_token_without_the_openid_scope() {
    use crate::support::logs::Captured;
    let (logs, _guard) = Captured::start();
    let app = dev_app().await;
    let secret = register(&app, "conf", false, json!({})).await;
    let got = sign_in(
        &app,
        "conf",
        secret.as_deref(),
        &[("scope", "openid email offline_access")],
    )
    .await;
    let (status, info) = userinfo(&app, &got["access_token"]).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let (status, narrowed) = token(
        &app,
        "conf",
        secret.as_deref(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", got["refresh_token"].as_str().unwrap()),
            ("scope", "email offline_access"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{narrowed}");
    assert_eq!(narrowed["scope"], "email offline_access", "{narrowed}");
    let resp = app
        .client
        .get(app.url("/userinfo"))
        .bearer_auth(narrowed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_scope\""),
        "{challenge}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert!(body.get("sub").is_none(), "{body}");
    assert!(
        !logs.with_reason("userinfo.no_openid_scope").is_empty(),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn offline_access_decides_whether_a_refresh_token_is_issued() {
    let app = dev_app().await;
    let secret = register(&app, "conf", false, json!({})).await;
    register(&app, "spa", true, json!({})).await;
    let no_refresh = register(&app, "norefresh", false, json!({"grant_types": ["authorization_code"]})).await;

    // A confidential client no longer gets one without asking.
    let got = sign_in(&app, "conf", secret.as_deref(), &[("scope", "openid")]).await;
    assert!(got.get("refresh_token").is_none(), "{got}");
    let got = sign_in(&app, "conf", secret.as_deref(), &[("scope", "openid offline_access")]).await;
    assert_eq!(got["scope"], "openid offline_access");
    let rt = got["refresh_token"]
        .as_str()
        .expect("refresh token with offline_access");
    let (status, refreshed) = token(
        &app,
        "conf",
        secret.as_deref(),
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert!(refreshed["refresh_token"].is_string());

    // A public client gets one when it asks.
    let got = sign_in(&app, "spa", None, &[("scope", "openid offline_access")]).await;
    assert!(got["refresh_token"].is_string(), "{got}");
    let got = sign_in(&app, "spa", None, &[("scope", "openid")]).await;
    assert!(got.get("refresh_token").is_none(), "{got}");

    // An app without the refresh grant is not granted offline_access.
    let got = sign_in(
        &app,
        "norefresh",
        no_refresh.as_deref(),
        &[("scope", "openid offline_access")],
    )
    .await;
    assert_eq!(got["scope"], "openid");
    assert!(got.get("refresh_token").is_none(), "{got}");
    let (status, body) = token(
        &app,
        "norefresh",
        no_refresh.as_deref(),
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client", "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("refresh_token"),
        "{body}"
    );
}

#[tokio::test]
async fn client_credentials_issues_an_api_token_for_the_app_itself() {
    let app = dev_app().await;
    apis(&app).await;
    let secret = register(
        &app,
        "worker",
        false,
        json!({
            "allowed_scopes": ["billing:read", "billing:admin"],
            "default_resource": BILLING,
            "grant_types": ["client_credentials"],
        }),
    )
    .await;
    let (status, got) = token(
        &app,
        "worker",
        secret.as_deref(),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "billing:read reports:read openid nonsense"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        got["scope"], "billing:read",
        "unknown, unallowed and OIDC scopes dropped"
    );
    assert!(
        got.get("id_token").is_none() && got.get("refresh_token").is_none(),
        "{got}"
    );
    let at = claims(&got["access_token"]);
    assert_eq!(at["sub"], "worker");
    assert_eq!(at["aud"], BILLING);
    assert_eq!(at["client_id"], "worker");
    assert!(at.get("tenant").is_none(), "{at}");
    // Without a scope: every scope the app is allowed at the target.
    let (_, all) = token(
        &app,
        "worker",
        secret.as_deref(),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(all["scope"], "billing:read billing:admin", "{all}");

    // The token introspects as active and is no user's token at userinfo.
    let resp = app
        .client
        .post(app.url("/introspect"))
        .basic_auth("worker", secret.as_deref())
        .form(&[("token", got["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    let intro: Value = resp.json().await.unwrap();
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["aud"], BILLING);
    let (status, body) = userinfo(&app, &got["access_token"]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_token");

    // RFC 7009: it can be revoked, and is then inactive.
    let resp = app
        .client
        .post(app.url("/revoke"))
        .basic_auth("worker", secret.as_deref())
        .form(&[("token", got["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let intro: Value = app
        .client
        .post(app.url("/introspect"))
        .basic_auth("worker", secret.as_deref())
        .form(&[("token", got["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intro, json!({"active": false}));

    // The app may not sign users in: it lacks authorization_code.
    let q = authorize(&app, &mut Browser::new(), "worker", &[("scope", "openid")]).await;
    assert_eq!(q.get("error").map(String::as_str), Some("unauthorized_client"), "{q:?}");
}

#[tokio::test]
async fn client_credentials_refusals() {
    let app = dev_app().await;
    apis(&app).await;
    register(
        &app,
        "spa",
        true,
        json!({"allowed_scopes": ["billing:read"], "default_resource": BILLING}),
    )
    .await;
    let web = register(
        &app,
        "web",
        false,
        json!({"allowed_scopes": ["billing:read"], "default_resource": BILLING}),
    )
    .await;
    let worker = register(
        &app,
        "worker",
        false,
        json!({"allowed_scopes": ["billing:read"], "default_resource": BILLING, "grant_types": ["client_credentials"]}),
    )
    .await;
    let cc = [("grant_type", "client_credentials"), ("scope", "billing:read")];

    // A public client: RFC 6749 §4.4 is for confidential clients only.
    let (status, body) = token(&app, "spa", None, &cc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client", "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("confidential"),
        "{body}"
    );

    // A confidential client whose grant_types lack it.
    let (status, body) = token(&app, "web", web.as_deref(), &cc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("client_credentials"),
        "{body}"
    );

    // Nothing grantable: invalid_scope; another API: invalid_target; bad secret: invalid_client.
    let (status, body) = token(
        &app,
        "worker",
        worker.as_deref(),
        &[("grant_type", "client_credentials"), ("scope", "reports:read nonsense")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope", "{body}");
    let (_, body) = token(
        &app,
        "worker",
        worker.as_deref(),
        &[("grant_type", "client_credentials"), ("resource", REPORTS)],
    )
    .await;
    assert_eq!(body["error"], "invalid_target", "{body}");
    let (status, body) = token(&app, "worker", Some("wrong"), &cc).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client", "{body}");
}

#[tokio::test]
async fn native_app_redirect_uris_follow_rfc_8252() {
    let app = dev_app().await;
    let create = |uri: &str| {
        let id = format!(
            "native-{}",
            portcullis::tokens::random_token(6)
                .to_lowercase()
                .replace(['-', '_'], "x")
        );
        let body = json!({"client_id": id, "redirect_uris": [uri], "public": true});
        let app = &app;
        async move { app.admin(Method::POST, "/admin/v1/clients", Some(body)).await }
    };
    for ok in [
        "http://127.0.0.1/cb",
        "http://127.10.20.30:8080/cb",
        "http://[::1]/cb",
        "http://localhost:3000/cb",
        "com.example.app:/oauth2redirect",
        "com.example.app://callback",
    ] {
        let (status, body) = create(ok).await;
        assert_eq!(status, StatusCode::CREATED, "{ok}: {body}");
    }
    for bad in [
        "myapp:/cb",
        "javascript:alert(1)//x.y",
        "data:text/html,x",
        "file:///cb",
        "http://127.0.0.1.evil.example/cb",
        "http://128.0.0.1/cb",
        "http://app.example/cb",
        "com.example.app:/cb#frag",
    ] {
        let (status, body) = create(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["field"], "redirect_uris[0]", "{bad}");
    }

    // At /authorize: a loopback IP literal matches whatever the port; localhost stays exact.
    let (_, _) = app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "cli", "public": true, "redirect_uris": [
                "http://127.0.0.1/cb", "http://[::1]:7000/cb", "http://localhost:3000/cb", "com.example.cli:/cb"
            ]})),
        )
        .await;
    let ask = |redirect: &str| {
        let mut url = app.url("/authorize");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "cli")
            .append_pair("redirect_uri", redirect)
            .append_pair("scope", "openid")
            .append_pair("tenant", "demo")
            .append_pair("prompt", "none")
            .append_pair(
                "code_challenge",
                &portcullis::tokens::sha256_base64url(VERIFIER.as_bytes()),
            )
            .append_pair("code_challenge_method", "S256");
        url
    };
    for accepted in [
        "http://127.0.0.1:53127/cb",
        "http://127.0.0.1/cb",
        "http://[::1]:1/cb",
        "http://localhost:3000/cb",
        "com.example.cli:/cb",
    ] {
        let resp = app.client.get(ask(accepted)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{accepted}");
        let to = resp.headers()["location"].to_str().unwrap();
        // prompt=none without a session: the answer goes back to the app's own address.
        assert!(to.starts_with(accepted), "{accepted} → {to}");
        assert!(to.contains("error=login_required"), "{to}");
    }
    for refused in [
        "http://localhost:3001/cb",
        "http://127.0.0.2:53127/cb",
        "http://127.0.0.1:53127/other",
        "com.example.cli:/other",
    ] {
        let resp = app.client.get(ask(refused)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{refused}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("authorize.redirect_uri_not_registered"),
            "{refused}: {body}"
        );
    }

    // The whole flow to a loopback port that was not registered.
    let redirect = "http://127.0.0.1:61000/cb";
    let mut url = ask(redirect);
    url.query_pairs_mut().clear().extend_pairs(
        ask(redirect)
            .query_pairs()
            .filter(|(k, _)| k != "prompt")
            .collect::<Vec<_>>(),
    );
    let mut browser = Browser::new();
    let stop = |u: &Url| u.port() == Some(61000);
    let login = browser.get_until(&url, &stop).await.page();
    let back = browser.submit_until(&login, &login.form(None), &stop).await.stopped();
    let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let (status, body) = token(
        &app,
        "cli",
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Whether `d` keeps to RFC 6749's `error_description` characters
/// (`%x20-21 / %x23-5B / %x5D-7E`).
fn rfc6749_description(d: &str) -> bool {
    d.bytes().all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

/// An `error_description` keeps to RFC 6749's characters whatever the
/// request held: a grant type with a quote and a non-ASCII letter, a
/// parameter whose non-ASCII name is sent twice, a bogus `prompt` value
/// (the error redirect to the app). None echoes the raw input.
#[tokio::test]
async fn error_descriptions_keep_to_the_rfc_6749_character_set() {
    let app = dev_app().await;
    apis(&app).await;
    let secret = register(&app, "app", false, json!({})).await;
    let (status, body) = token(&app, "app", secret.as_deref(), &[("grant_type", "fo\"o\u{e9}")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");
    let d = body["error_description"].as_str().unwrap();
    assert!(rfc6749_description(d), "{d:?}");

    let twice = app
        .client
        .post(app.url("/token"))
        .basic_auth("app", secret.as_deref())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=authorization_code&%C3%A9%22x%5C=1&%C3%A9%22x%5C=2")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    let body: Value = twice.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let d = body["error_description"].as_str().unwrap();
    assert!(rfc6749_description(d), "{d:?}");

    let mut browser = Browser::new();
    let q = authorize(
        &app,
        &mut browser,
        "app",
        &[("scope", "openid"), ("prompt", "bogus\"\u{e9}\\")],
    )
    .await;
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"), "{q:?}");
    let d = q.get("error_description").unwrap();
    assert!(rfc6749_description(d), "{d:?}");
}

#[tokio::test]
async fn prompt_consent_and_select_account_are_refused_and_not_advertised() {
    let app = dev_app().await;
    apis(&app).await;
    register(&app, "app", false, json!({})).await;
    let mut browser = Browser::new();
    for (prompt, error) in [
        ("consent", "consent_required"),
        ("login consent", "consent_required"),
        ("select_account", "invalid_request"),
    ] {
        let q = authorize(&app, &mut browser, "app", &[("scope", "openid"), ("prompt", prompt)]).await;
        assert_eq!(q.get("error").map(String::as_str), Some(error), "{prompt}: {q:?}");
        assert!(
            q.get("error_description")
                .unwrap()
                .contains(prompt.split(' ').next_back().unwrap()),
            "{q:?}"
        );
        assert!(!q.contains_key("code"));
    }
    let disco = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(disco["prompt_values_supported"], json!(["none", "login"]));
    assert_eq!(
        disco["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    let scopes: Vec<&str> = disco["scopes_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        "openid",
        "email",
        "profile",
        "groups",
        "offline_access",
        "billing:read",
        "billing:admin",
        "reports:read",
    ] {
        assert!(scopes.contains(&s), "{s} in {scopes:?}");
    }
}

#[tokio::test]
async fn resource_servers_are_managed_through_the_admin_api() {
    let app = spawn_app(AppOptions::default()).await;
    apis(&app).await;
    let encoded: String = url::form_urlencoded::byte_serialize(BILLING.as_bytes()).collect();
    let path = format!("/admin/v1/resource-servers/{encoded}");
    let (status, got) = app.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["identifier"], BILLING);
    assert_eq!(
        got["scopes"][1],
        json!({"name": "billing:admin", "description": "billing:admin access"})
    );
    let (status, list) = app.admin(Method::GET, "/admin/v1/resource-servers", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["resource_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["identifier"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&BILLING) && ids.contains(&REPORTS), "{list}");

    // Problems name the field (nested paths from serde_path_to_error).
    for (body, status, field) in [
        (json!({"identifier": BILLING}), StatusCode::CONFLICT, "identifier"),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"name": "billing/read"}]}),
            StatusCode::BAD_REQUEST,
            "scopes[0].name",
        ),
        (
            json!({"identifier": "https://x.example.test/\"q\""}),
            StatusCode::BAD_REQUEST,
            "identifier",
        ),
        (
            json!({"identifier": "not a uri"}),
            StatusCode::BAD_REQUEST,
            "identifier",
        ),
        (
            json!({"identifier": "https://x.example.test#f"}),
            StatusCode::BAD_REQUEST,
            "identifier",
        ),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"name": "a"}, {"name": "two words"}]}),
            StatusCode::BAD_REQUEST,
            "scopes[1].name",
        ),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"name": "openid"}]}),
            StatusCode::BAD_REQUEST,
            "scopes[0].name",
        ),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"name": "a"}, {"name": "a"}]}),
            StatusCode::BAD_REQUEST,
            "scopes[1].name",
        ),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"description": "no name"}]}),
            StatusCode::BAD_REQUEST,
            "scopes[0].name",
        ),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"name": "a", "colour": "red"}]}),
            StatusCode::BAD_REQUEST,
            "scopes[0].colour",
        ),
        (
            json!({"identifier": "https://x.example.test", "scopes": [{"name": 7}]}),
            StatusCode::BAD_REQUEST,
            "scopes[0].name",
        ),
        (json!({"name": "no identifier"}), StatusCode::BAD_REQUEST, "identifier"),
    ] {
        let (got, answer) = app
            .admin(Method::POST, "/admin/v1/resource-servers", Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    assert_eq!(
        app.admin(
            Method::GET,
            "/admin/v1/resource-servers/https%3A%2F%2Fx.example.test",
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND,
        "nothing half-written"
    );
    // Another API may define a scope name billing already defines.
    let (status, answer) = app
        .admin(
            Method::POST,
            "/admin/v1/resource-servers",
            Some(json!({"identifier": "https://other.example.test", "scopes": [{"name": "billing:read"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    // Apps: every new field is checked and named.
    let base = json!({"client_id": "app", "redirect_uris": [REDIRECT]});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (extra, field) in [
        (json!({"grant_types": ["password"]}), "grant_types[0]"),
        (
            json!({"grant_types": ["authorization_code", "implicit"]}),
            "grant_types[1]",
        ),
        (json!({"grant_types": []}), "grant_types"),
        (
            json!({"grant_types": ["client_credentials"], "public": true}),
            "grant_types[0]",
        ),
        (
            json!({"allowed_scopes": ["billing:read", "billing:write"]}),
            "allowed_scopes[1]",
        ),
        (
            json!({"default_resource": "https://nope.example.test"}),
            "default_resource",
        ),
        (json!({"allowed_scopes": "billing:read"}), "allowed_scopes"),
    ] {
        let (status, answer) = app
            .admin(Method::POST, "/admin/v1/clients", Some(with(extra.clone())))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {answer}");
        assert_eq!(answer["field"], field, "{extra}: {answer}");
    }
    let (status, created) = app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(with(json!({
                "allowed_scopes": ["billing:read"], "default_resource": BILLING,
                "grant_types": ["authorization_code", "client_credentials"],
            }))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["grant_types"],
        json!(["authorization_code", "client_credentials"])
    );
    assert_eq!(created["default_resource"], BILLING);
    assert_eq!(created["allowed_scopes"], json!(["billing:read"]));
    let (_, plain) = app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "plain", "redirect_uris": [REDIRECT]})),
        )
        .await;
    assert_eq!(plain["grant_types"], json!(["authorization_code", "refresh_token"]));

    // In use (its default resource): refused; once the app is gone: deleted.
    let (status, answer) = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["field"], "identifier");
    assert_eq!(
        app.admin(Method::DELETE, "/admin/v1/clients/app", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.admin(Method::DELETE, &path, None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.admin(Method::GET, &path, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.admin(Method::DELETE, &path, None).await.0, StatusCode::NOT_FOUND);
}

/// RFC 8693 §5: token exchange, like client_credentials, needs a client that
/// authenticates: a public app is refused the grant at creation and by a
/// patch, naming the field.
#[tokio::test]
async fn a_public_app_is_refused_the_token_exchange_grant_at_registration() {
    const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    let app = dev_app().await;
    let (status, answer) = app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "spa", "redirect_uris": [REDIRECT], "public": true,
                "grant_types": ["authorization_code", EXCHANGE]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["field"], "grant_types[1]", "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("confidential"), "{answer}");
    assert_eq!(
        app.admin(Method::GET, "/admin/v1/clients/spa", None).await.0,
        StatusCode::NOT_FOUND
    );

    register(&app, "spa", true, json!({})).await;
    let (status, answer) = app
        .admin(
            Method::PATCH,
            "/admin/v1/clients/spa",
            Some(json!({"grant_types": ["authorization_code", EXCHANGE]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["field"], "grant_types[1]", "{answer}");
    // A confidential app may have it.
    register(
        &app,
        "web",
        false,
        json!({"grant_types": ["authorization_code", EXCHANGE]}),
    )
    .await;
}

fn declared(s: &mut portcullis::config::Settings) {
    let file = r#"
        [[resource_servers]]
        identifier = "https://billing.example.test"
        name = "Billing API"
        scopes = [{ name = "billing:read", description = "Read invoices" }]

        [[resource_servers]]
        identifier = "https://billing-eu.example.test"
        scopes = [{ name = "billing:read", description = "Read EU invoices" }]

        [[clients]]
        client_id = "declared"
        client_secret = "declared-secret-0123456789"
        redirect_uris = ["https://app.example.test/cb"]
        allowed_scopes = ["billing:read"]
        default_resource = "https://billing.example.test"
        grant_types = ["client_credentials"]
    "#;
    let parsed = portcullis::config::Settings::parse(file, "test.toml").unwrap();
    s.resource_servers = parsed.resource_servers;
    s.clients = parsed.clients;
}

#[tokio::test]
async fn resource_servers_and_apps_can_be_declared_in_the_config_file() {
    let app = spawn_app(AppOptions {
        tweak: Some(declared),
        ..AppOptions::default()
    })
    .await;
    let (status, rs) = app
        .admin(
            Method::GET,
            "/admin/v1/resource-servers/https%3A%2F%2Fbilling.example.test",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rs["name"], "Billing API");
    let (status, got) = token(
        &app,
        "declared",
        Some("declared-secret-0123456789"),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(claims(&got["access_token"])["aud"], BILLING);
    // Both declared APIs define billing:read; the bare allowed scope reaches either.
    let (status, got) = token(
        &app,
        "declared",
        Some("declared-secret-0123456789"),
        &[
            ("grant_type", "client_credentials"),
            ("resource", "https://billing-eu.example.test"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["scope"], "billing:read");
    assert_eq!(claims(&got["access_token"])["aud"], "https://billing-eu.example.test");

    // Unknown keys stay errors, and bad values are named.
    let err = portcullis::config::Settings::parse(
        "[[resource_servers]]\nidentifier = \"https://a.example\"\ncolour = 1\n",
        "x.toml",
    )
    .unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
    let mut s = portcullis::config::Settings::parse(
        "[[resource_servers]]\nidentifier = \"api\"\nscopes = [{ name = \"openid\" }]\n\
         [[clients]]\nclient_id = \"c\"\nredirect_uris = [\"https://a.example/cb\"]\ngrant_types = [\"client_credentials\", \"password\"]\n",
        "x.toml",
    )
    .unwrap();
    s.server.public_url = "http://127.0.0.1:8080".into();
    s.store.backend = Some("memory".into());
    let err = s.validate("x.toml").unwrap_err();
    let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "clients[0].grant_types[0]",
            "clients[0].grant_types[1]",
            "resource_servers[0].identifier",
        ],
        "{err}"
    );
}

/// The grant is decided again at each refresh: a scope the app lost is no
/// longer granted, and a `resource` other than the granted one is refused.
#[tokio::test]
async fn a_refresh_grants_only_what_is_still_allowed_for_the_same_resource() {
    let app = dev_app().await;
    apis(&app).await;
    let secret = register(
        &app,
        "billing-app",
        false,
        json!({"allowed_scopes": ["billing:read", "billing:admin"], "default_resource": BILLING}),
    )
    .await;
    let got = sign_in(
        &app,
        "billing-app",
        secret.as_deref(),
        &[("scope", "openid billing:read billing:admin offline_access")],
    )
    .await;
    assert_eq!(got["scope"], "openid billing:read billing:admin offline_access");
    let refresh = |rt: String, extra: Option<(&'static str, &'static str)>| {
        let app = &app;
        let secret = secret.clone();
        async move {
            let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
            form.extend(extra);
            token(app, "billing-app", secret.as_deref(), &form).await
        }
    };
    let (status, body) = refresh(
        got["refresh_token"].as_str().unwrap().to_owned(),
        Some(("resource", REPORTS)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_target", "{body}");

    let got = sign_in(
        &app,
        "billing-app",
        secret.as_deref(),
        &[("scope", "openid billing:read billing:admin offline_access")],
    )
    .await;
    let mut client =
        std::sync::Arc::unwrap_or_clone(app.state.provider.clients.get("billing-app").await.unwrap().unwrap());
    client.allowed_scopes = vec!["billing:read".into()];
    app.state.provider.clients.put(&client).await.unwrap();
    let (status, body) = refresh(
        got["refresh_token"].as_str().unwrap().to_owned(),
        Some(("resource", BILLING)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "openid billing:read offline_access");
    let at = claims(&body["access_token"]);
    assert_eq!(at["scope"], "openid billing:read offline_access");
    assert_eq!(at["aud"], BILLING);
}

const API_A: &str = "https://a.example.test";
const API_B: &str = "https://b.example.test/api";
const API_C: &str = "https://c.example.test";

/// Registers the API `id` with `scopes`; returns the admin API's answer.
async fn api(app: &TestApp, id: &str, scopes: &[&str]) -> (StatusCode, Value) {
    let scopes: Vec<Value> = scopes.iter().map(|s| json!({"name": s})).collect();
    app.admin(
        Method::POST,
        "/admin/v1/resource-servers",
        Some(json!({"identifier": id, "name": id, "scopes": scopes})),
    )
    .await
}

/// A (read, write) and B (read, write): the same scope names at two APIs.
async fn twin_apis(app: &TestApp) {
    for id in [API_A, API_B] {
        let (status, body) = api(app, id, &["read", "write"]).await;
        assert_eq!(status, StatusCode::CREATED, "{id}: {body}");
    }
}

#[tokio::test]
async fn two_apis_may_define_the_same_scope_names() {
    let app = dev_app().await;
    twin_apis(&app).await;
    for id in [API_A, API_B] {
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let (status, got) = app
            .admin(Method::GET, &format!("/admin/v1/resource-servers/{encoded}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["scopes"][0]["name"], "read", "{got}");
    }
    // Discovery lists each bare name once.
    let disco = app.get_json("/.well-known/openid-configuration").await;
    let scopes: Vec<&str> = disco["scopes_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        scopes,
        [
            "openid",
            "email",
            "profile",
            "groups",
            "offline_access",
            "read",
            "write"
        ]
    );
}

/// An app allowed `https://a.example.test/read` does not get B's `read`,
/// whichever way it asks; qualified requested scopes count only at their own API.
#[tokio::test]
async fn a_qualified_allowed_scope_is_granted_only_at_its_api() {
    let app = dev_app().await;
    twin_apis(&app).await;
    let (status, body) = api(&app, API_C, &["read"]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let a_read = format!("{API_A}/read");
    let b_read = format!("{API_B}/read");
    let b_write = format!("{API_B}/write");
    let secret = register(
        &app,
        "worker",
        false,
        json!({"allowed_scopes": [a_read, b_write], "grant_types": ["client_credentials"]}),
    )
    .await;
    let cc = |resource: &'static str, scope: Option<String>| {
        let app = &app;
        let secret = secret.clone();
        async move {
            let mut form = vec![("grant_type", "client_credentials"), ("resource", resource)];
            let scope = scope.unwrap_or_default();
            if !scope.is_empty() {
                form.push(("scope", scope.as_str()));
            }
            token(app, "worker", secret.as_deref(), &form).await
        }
    };

    // At B: only write (allowed there through its qualified form), echoed as asked.
    let (status, got) = cc(API_B, Some(format!("read write {a_read} {b_read} {b_write}"))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        got["scope"],
        format!("write {b_write}"),
        "B's read is not allowed: {got}"
    );
    let at = claims(&got["access_token"]);
    assert_eq!(at["aud"], API_B);
    assert_eq!(at["scope"], format!("write {b_write}"));

    // At A: read in both forms; A's write and B's scopes are not granted.
    let (status, got) = cc(API_A, Some(format!("read {a_read} write {b_write}"))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["scope"], format!("read {a_read}"), "{got}");
    assert_eq!(claims(&got["access_token"])["aud"], API_A);

    // Without a scope: every allowed scope that is A's.
    let (_, got) = cc(API_A, None).await;
    assert_eq!(got["scope"], a_read, "{got}");

    // A qualified scope of another API is never granted: one token, one aud.
    let (status, got) = cc(API_A, Some(b_write.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(got["error"], "invalid_scope", "{got}");

    // C defines read too, but the app is allowed only A's and B's scopes.
    let (status, got) = cc(API_C, Some("read".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(got["error"], "invalid_target", "{got}");
    assert!(
        got["error_description"]
            .as_str()
            .unwrap()
            .contains("may not obtain tokens for that resource"),
        "{got}"
    );
}

/// An app allowed bare `read` gets it at whichever API defining `read` it
/// targets, through a user sign-in and a refresh.
#[tokio::test]
async fn a_bare_allowed_scope_is_granted_at_whichever_api_the_app_targets() {
    let app = dev_app().await;
    twin_apis(&app).await;
    let (status, body) = api(&app, API_C, &["other"]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = register(&app, "web", false, json!({"allowed_scopes": ["read"]})).await;

    let got = sign_in(
        &app,
        "web",
        secret.as_deref(),
        &[("scope", "openid read write"), ("resource", API_A)],
    )
    .await;
    assert_eq!(got["scope"], "openid read", "{got}");
    assert_eq!(claims(&got["access_token"])["aud"], API_A);

    let wanted = format!("openid read {API_B}/read {API_A}/read offline_access");
    let granted = format!("openid read {API_B}/read offline_access");
    let got = sign_in(
        &app,
        "web",
        secret.as_deref(),
        &[("scope", &wanted), ("resource", API_B)],
    )
    .await;
    assert_eq!(got["scope"], granted, "A's qualified read is not B's: {got}");
    let at = claims(&got["access_token"]);
    assert_eq!(at["aud"], API_B);
    assert_eq!(at["scope"], granted);
    let (status, refreshed) = token(
        &app,
        "web",
        secret.as_deref(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", got["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(refreshed["scope"], granted);
    assert_eq!(claims(&refreshed["access_token"])["aud"], API_B);

    // Without a resource: no API, no API scope.
    let got = sign_in(&app, "web", secret.as_deref(), &[("scope", "openid read")]).await;
    assert_eq!(got["scope"], "openid");
    assert_eq!(claims(&got["access_token"])["aud"], "web");

    // C does not define read: not a target for this app.
    let q = authorize(
        &app,
        &mut Browser::new(),
        "web",
        &[("scope", "openid read"), ("resource", API_C)],
    )
    .await;
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_target"), "{q:?}");
}

#[tokio::test]
async fn allowed_scopes_are_checked_in_both_forms_and_the_problem_is_named() {
    let app = spawn_app(AppOptions::default()).await;
    twin_apis(&app).await;
    let (status, body) = api(&app, API_C, &["other"]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (allowed, field, why) in [
        (
            json!(["nope"]),
            "allowed_scopes[0]",
            "not defined by any resource server",
        ),
        (
            json!(["read", format!("{API_C}/read")]),
            "allowed_scopes[1]",
            "is not defined by the resource server",
        ),
        (
            json!(["https://unknown.example.test/read"]),
            "allowed_scopes[0]",
            "is not a registered resource server",
        ),
        (json!([format!("{API_A}/")]), "allowed_scopes[0]", "the scope name"),
        (
            json!(["openid", format!("{API_A}/openid")]),
            "allowed_scopes[1]",
            "OpenID Connect scope",
        ),
    ] {
        let (status, answer) = app
            .admin(
                Method::POST,
                "/admin/v1/clients",
                Some(json!({"client_id": "app", "redirect_uris": [REDIRECT], "allowed_scopes": allowed})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{allowed}: {answer}");
        assert_eq!(answer["field"], field, "{allowed}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(why), "{allowed}: {answer}");
    }
    let (status, answer) = app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({"client_id": "app", "redirect_uris": [REDIRECT],
                "allowed_scopes": ["read", format!("{API_B}/write"), format!("{API_C}/other"), "openid"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test]
async fn deleting_an_api_is_refused_while_an_app_refers_to_it() {
    let app = spawn_app(AppOptions::default()).await;
    twin_apis(&app).await;
    let (status, body) = api(&app, API_C, &["read"]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let path = |id: &str| {
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        format!("/admin/v1/resource-servers/{encoded}")
    };
    let delete = |id: &'static str| {
        let app = &app;
        let p = path(id);
        async move { app.admin(Method::DELETE, &p, None).await }
    };
    register(&app, "bare", false, json!({"allowed_scopes": ["read"]})).await;
    register(
        &app,
        "qualified",
        false,
        json!({"allowed_scopes": [format!("{API_C}/read")]}),
    )
    .await;

    // B: A and C still define read, and nobody names B.
    assert_eq!(delete(API_B).await.0, StatusCode::NO_CONTENT);
    // C: named by a qualified allowed scope.
    let (status, answer) = delete(API_C).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["field"], "identifier");
    assert!(answer["detail"].as_str().unwrap().contains("\"qualified\""), "{answer}");
    assert_eq!(
        app.admin(Method::DELETE, "/admin/v1/clients/qualified", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(API_C).await.0, StatusCode::NO_CONTENT);
    // A: the last API defining the bare read an app is allowed.
    let (status, answer) = delete(API_A).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("\"bare\""), "{answer}");
    assert_eq!(
        app.admin(Method::DELETE, "/admin/v1/clients/bare", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(API_A).await.0, StatusCode::NO_CONTENT);
}
