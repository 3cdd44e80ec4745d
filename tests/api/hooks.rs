//! Hooks (issue 10): a tenant's signed webhooks, against a receiver the test
//! runs on loopback (`support/hooks.rs`) that verifies every signature.
//! The pre-token-generation hook changes claims of the ID and access tokens
//! at the code and refresh grants, can never change protected claims
//! (`sub`, `tenant`...), and fails the token request closed when it fails;
//! the circuit breaker opens and closes; the admin API configures hooks
//! with a secret shown once. Reason codes are asserted where the provider
//! decides them (`state.provider.token`), next to the HTTP answers.

use crate::revocation::{register, submit_login, Code, Rp, DEMO};
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Nav};
use crate::support::hooks::{AnswerSigning, Behavior, HookServer};
use crate::support::logs::Captured;
use portcullis::clock::{Clock, ManualClock, SharedClock, SystemClock};
use portcullis::provider::grants::{ClientCredentials, TokenRequest};
use portcullis::provider::OAuthError;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

const PRE: &str = "pre_token_generation";

async fn dev_app(clock: Option<ManualClock>, tweak: Option<fn(&mut portcullis::config::Settings)>) -> TestApp {
    spawn_app(AppOptions {
        dev: true,
        clock,
        tweak,
        ..AppOptions::default()
    })
    .await
}

/// Configures the demo tenant's hook `kind` at the receiver's `name` path;
/// hands the generated secret to the receiver.
async fn configure(app: &TestApp, hooks: &HookServer, kind: &str, name: &str, timeout_ms: u64) -> Value {
    let (status, answer) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/{DEMO}/hooks/{kind}"),
            Some(json!({"url": hooks.url(name), "timeout_ms": timeout_ms})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    hooks.set_secret(answer["secret"].as_str().expect("a generated secret, shown once"));
    answer
}

/// Signs in through the dev IdP (or by SSO) with profile and groups scopes;
/// returns the code.
async fn sign_in(app: &TestApp, browser: &mut Browser, rp: &Rp, email: &str) -> Code {
    let verifier = portcullis::tokens::random_token(32);
    let mut url = app.url("/authorize");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &rp.client_id)
        .append_pair("redirect_uri", rp.redirect.as_str())
        .append_pair("scope", "openid email profile groups offline_access")
        .append_pair("tenant", DEMO)
        .append_pair("nonce", "n-1")
        .append_pair(
            "code_challenge",
            &portcullis::tokens::sha256_base64url(verifier.as_bytes()),
        )
        .append_pair("code_challenge_method", "S256");
    let host = rp.redirect.host_str().unwrap().to_owned();
    let stop = move |u: &Url| u.host_str() == Some(host.as_str());
    let back = match browser.get_until(&url, &stop).await {
        Nav::Stopped(u) => u,
        Nav::Page(login) => submit_login(browser, rp, &login, email).await.stopped(),
    };
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap_or_else(|| panic!("no code in {back}"))
        .1
        .into_owned();
    Code { code, verifier }
}

async fn client(app: &TestApp, rp: &Rp) -> std::sync::Arc<portcullis::provider::clients::Client> {
    let creds = ClientCredentials::Secret {
        id: rp.client_id.clone(),
        secret: rp.secret.clone(),
    };
    app.state.provider.authenticate_client(&creds).await.unwrap()
}

/// Redeems `code` through the provider: the token response or the error
/// with its reason code.
async fn redeem(app: &TestApp, rp: &Rp, code: &Code) -> Result<Value, OAuthError> {
    let req = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code.code.clone()),
        redirect_uri: Some(rp.redirect.to_string()),
        code_verifier: Some(code.verifier.clone()),
        ..TokenRequest::default()
    };
    let client = client(app, rp).await;
    app.state
        .provider
        .token(&client, &req)
        .await
        .map(|r| serde_json::to_value(r).unwrap())
}

async fn refresh(app: &TestApp, rp: &Rp, rt: &str) -> Result<Value, OAuthError> {
    let req = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(rt.into()),
        ..TokenRequest::default()
    };
    let client = client(app, rp).await;
    app.state
        .provider
        .token(&client, &req)
        .await
        .map(|r| serde_json::to_value(r).unwrap())
}

/// The claims of a JWT (its signature is checked by the provider where it matters).
fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[tokio::test]
async fn pre_token_hook_adds_overrides_and_suppresses_claims_at_code_and_refresh() {
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&app, "hook-claims").await;
    configure(&app, &hooks, PRE, "pre", 2000).await;
    hooks.behave(
        "pre",
        Behavior::Answer(json!({
            "id_token": {
                "claims_to_add_or_override": {"plan": "gold", "name": "Jane Q. Doe"},
                "claims_to_suppress": ["groups"]
            },
            "access_token": {"claims_to_add_or_override": {"roles": ["billing-admin"]}}
        })),
    );
    let mut browser = Browser::new();
    let code = sign_in(&app, &mut browser, &rp, "jane@hooks.example").await;
    let tokens = redeem(&app, &rp, &code).await.unwrap();
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["plan"], "gold");
    assert_eq!(id["name"], "Jane Q. Doe", "overridden");
    assert!(id.get("groups").is_none(), "suppressed: {id}");
    assert_eq!(id["given_name"], "Jane", "untouched claims stay");
    assert!(id["at_hash"].is_string(), "at_hash over the changed access token");
    let at = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims(at)["roles"], json!(["billing-admin"]));
    assert!(claims(at).get("plan").is_none(), "each token its own changes");
    // The changed access token is one the gateway accepts.
    let checked = app.state.provider.check_access_token(at).await.unwrap();
    assert_eq!(checked.sub, id["sub"].as_str().unwrap());

    // What the hook was told: one signed call with the user, app, scopes and claims.
    let calls = hooks.calls_to("pre");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(call.signed, "the signature verifies under the generated secret");
    assert_eq!(call.kind.as_deref(), Some(PRE));
    assert_eq!(call.body["tenant"], DEMO);
    assert_eq!(call.body["client_id"], "hook-claims");
    assert_eq!(call.body["user"]["email"], "jane@hooks.example");
    assert_eq!(call.body["user"]["sub"], id["sub"]);
    assert_eq!(call.body["id_token"]["nonce"], "n-1");
    assert_eq!(call.body["id_token"]["groups"], json!(["engineering", "admins"]));
    assert_eq!(call.body["access_token"]["sub"], id["sub"]);
    assert!(call.body["scopes"].as_array().unwrap().contains(&json!("groups")));

    // The refresh grant asks the hook again.
    hooks.behave(
        "pre",
        Behavior::Answer(json!({"id_token": {"claims_to_add_or_override": {"plan": "platinum"}}})),
    );
    let refreshed = refresh(&app, &rp, tokens["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    let id2 = claims(refreshed["id_token"].as_str().unwrap());
    assert_eq!(id2["plan"], "platinum");
    assert_eq!(
        id2["groups"],
        json!(["engineering", "admins"]),
        "this answer suppresses nothing"
    );
    assert_eq!(hooks.calls_to("pre").len(), 2);
    assert!(hooks.calls().iter().all(|c| c.signed));
}

#[tokio::test]
async fn pre_token_hook_cannot_change_sub_tenant_or_other_protected_claims() {
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&app, "hook-protected").await;
    configure(&app, &hooks, PRE, "pre", 2000).await;
    let mut browser = Browser::new();
    for answer in [
        json!({"id_token": {"claims_to_add_or_override": {"sub": "someone-else"}}}),
        json!({"access_token": {"claims_to_add_or_override": {"sub": "someone-else"}}}),
        json!({"access_token": {"claims_to_add_or_override": {"tenant": "other-tenant"}}}),
        json!({"id_token": {"claims_to_suppress": ["tenant"]}}),
        json!({"access_token": {"claims_to_suppress": ["sub"]}}),
        json!({"id_token": {"claims_to_add_or_override": {"email_verified": true}}}),
        json!({"access_token": {"claims_to_add_or_override": {"aud": "https://elsewhere.example"}}}),
    ] {
        hooks.behave("pre", Behavior::Answer(answer.clone()));
        let code = sign_in(&app, &mut browser, &rp, "mallory@hooks.example").await;
        let e = redeem(&app, &rp, &code).await.unwrap_err();
        assert_eq!(e.reason, "hook.protected_claim", "{answer}");
        assert_eq!(e.code.as_str(), "server_error", "{answer}");
    }
    // Over HTTP: a 500 with no token in it.
    hooks.behave(
        "pre",
        Behavior::Answer(json!({"access_token": {"claims_to_add_or_override": {"tenant": "x"}}})),
    );
    let code = sign_in(&app, &mut browser, &rp, "mallory@hooks.example").await;
    let t = crate::revocation::redeem(&app, &rp, &code).await;
    assert_eq!(t.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(t.error(), Some("server_error"));
    assert!(t.body.get("access_token").is_none() && t.body.get("id_token").is_none());
    // The refusal is a security event of the tenant.
    let (_, log) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/{DEMO}/audit"), None)
        .await;
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "hook.refused" && e["reason"] == "hook.protected_claim"),
        "{log}"
    );
}

#[tokio::test]
async fn failing_or_slow_pre_token_hook_fails_the_token_request_closed() {
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&app, "hook-failing").await;
    let created = configure(&app, &hooks, PRE, "pre", 300).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let mut browser = Browser::new();

    // A working hook first, for a refresh token to try later.
    let code = sign_in(&app, &mut browser, &rp, "sam@hooks.example").await;
    let good = redeem(&app, &rp, &code).await.unwrap();
    let sub = claims(good["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();

    let cases: [(Behavior, &str, &str, usize); 4] = [
        (Behavior::Status(500), "hook.bad_status", "temporarily_unavailable", 2),
        (
            Behavior::Slow(Duration::from_millis(1500)),
            "hook.timeout",
            "temporarily_unavailable",
            2,
        ),
        (Behavior::Garbage("not json"), "hook.bad_answer", "server_error", 1),
        (Behavior::Status(403), "hook.bad_status", "server_error", 1),
    ];
    for (behavior, reason, error, attempts) in cases {
        hooks.behave("pre", behavior.clone());
        let before = hooks.calls_to("pre").len();
        let code = sign_in(&app, &mut browser, &rp, "sam@hooks.example").await;
        let e = redeem(&app, &rp, &code).await.unwrap_err();
        assert_eq!(e.reason, reason, "{behavior:?}");
        assert_eq!(e.code.as_str(), error, "{behavior:?}");
        // Retried once only where it may help (the hook is idempotent).
        assert_eq!(hooks.calls_to("pre").len() - before, attempts, "{behavior:?}");
        // The refresh family the redemption named in the code's marker is
        // in no record and no index: a refused grant leaves none behind.
        let named = crate::revocation::family_named_by(&app, &code).await;
        assert_eq!(
            crate::revocation::family_left(&app, &named, &sub).await,
            (false, false),
            "{behavior:?}: family {named}"
        );
    }
    // A wrong signature key at the receiver is a refusal (401) too.
    hooks.set_secret("not-the-secret-the-gateway-signs-with-000");
    let code = sign_in(&app, &mut browser, &rp, "sam@hooks.example").await;
    assert_eq!(redeem(&app, &rp, &code).await.unwrap_err().reason, "hook.bad_status");

    // The refresh grant fails closed as well, and over HTTP it is a 503.
    hooks.set_secret(&secret);
    hooks.behave("pre", Behavior::Status(502));
    let t = crate::revocation::refresh(&app, &rp, good["refresh_token"].as_str().unwrap()).await;
    assert_eq!(t.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", t.body);
    assert_eq!(t.error(), Some("temporarily_unavailable"));
    assert!(t.body.get("access_token").is_none());
}

/// A hook configured with `sign_answers` must sign each answer for its
/// call (`Portcullis-Signature` over `<t>.<call id>.<body>` with the hook's
/// secret): an answer unsigned, signed with another secret, or signed for
/// another call (replayed) fails the token request closed
/// (`hook.unsigned_answer`), so nothing between the gateway and the hook can
/// make claims up. A replacement that leaves `sign_answers` out keeps it.
#[tokio::test]
async fn a_hook_that_must_sign_its_answers_is_refused_an_answer_not_signed_for_its_call() {
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&app, "hook-signed").await;
    configure(&app, &hooks, PRE, "pre", 2000).await;
    let path = format!("/admin/v1/tenants/{DEMO}/hooks/{PRE}");
    let (status, view) = app
        .admin(
            Method::PUT,
            &path,
            Some(json!({"url": hooks.url("pre"), "sign_answers": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["sign_answers"], true, "{view}");
    hooks.behave(
        "pre",
        Behavior::Answer(json!({"access_token": {"claims_to_add_or_override": {"roles": ["admin"]}}})),
    );
    let mut browser = Browser::new();
    for (signing, refused) in [
        (AnswerSigning::No, true),
        (AnswerSigning::WrongSecret, true),
        (AnswerSigning::AnotherCall, true),
        (AnswerSigning::Yes, false),
    ] {
        hooks.sign_answers(signing);
        let code = sign_in(&app, &mut browser, &rp, "sig@hooks.example").await;
        match redeem(&app, &rp, &code).await {
            Err(e) => {
                assert!(refused, "{signing:?}: {e:?}");
                assert_eq!(e.reason, "hook.unsigned_answer", "{signing:?}");
                assert_eq!(e.code.as_str(), "server_error", "{signing:?}");
            }
            Ok(tokens) => {
                assert!(!refused, "{signing:?} was accepted");
                assert_eq!(
                    claims(tokens["access_token"].as_str().unwrap())["roles"],
                    json!(["admin"])
                );
            }
        }
    }
    // Replaced without the field: still required.
    let (status, view) = app
        .admin(Method::PUT, &path, Some(json!({"url": hooks.url("pre")})))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["sign_answers"], true, "{view}");
    hooks.sign_answers(AnswerSigning::No);
    let code = sign_in(&app, &mut browser, &rp, "sig@hooks.example").await;
    assert_eq!(
        redeem(&app, &rp, &code).await.unwrap_err().reason,
        "hook.unsigned_answer"
    );
}

#[tokio::test]
async fn breaker_opens_after_consecutive_failures_and_closes_after_a_good_trial() {
    fn tweak(s: &mut portcullis::config::Settings) {
        s.hooks.breaker_failures = 2;
        s.hooks.breaker_open_secs = 60;
        s.hooks.retries = 0;
    }
    let clock = ManualClock::at(SystemClock.now());
    let app = dev_app(Some(clock.clone()), Some(tweak)).await;
    let hooks = HookServer::start(Arc::new(clock.clone())).await;
    let rp = register(&app, "hook-breaker").await;
    configure(&app, &hooks, PRE, "pre", 2000).await;
    let mut browser = Browser::new();
    hooks.behave("pre", Behavior::Status(500));
    for _ in 0..2 {
        let code = sign_in(&app, &mut browser, &rp, "bo@hooks.example").await;
        assert_eq!(redeem(&app, &rp, &code).await.unwrap_err().reason, "hook.bad_status");
    }
    assert_eq!(hooks.calls_to("pre").len(), 2);
    // Open: refused at once, the hook is not called.
    hooks.behave("pre", Behavior::Answer(json!({})));
    let code = sign_in(&app, &mut browser, &rp, "bo@hooks.example").await;
    let e = redeem(&app, &rp, &code).await.unwrap_err();
    assert_eq!(e.reason, "hook.circuit_open");
    assert_eq!(e.code.as_str(), "temporarily_unavailable");
    assert_eq!(hooks.calls_to("pre").len(), 2, "not called while open");
    // After the open time, one trial; it succeeds and the circuit closes.
    clock.advance(chrono::Duration::seconds(61));
    let code = sign_in(&app, &mut browser, &rp, "bo@hooks.example").await;
    redeem(&app, &rp, &code).await.unwrap();
    assert_eq!(hooks.calls_to("pre").len(), 3);
    assert!(
        app.state.provider.hooks.as_ref().unwrap().breaker().is_empty(),
        "closed"
    );
    let code = sign_in(&app, &mut browser, &rp, "bo@hooks.example").await;
    redeem(&app, &rp, &code).await.unwrap();
    assert_eq!(hooks.calls_to("pre").len(), 4);
}

/// A hook that answers, even to refuse a call's input (a 4xx, an answer
/// it cannot use), is up: such failures fail their own call closed and
/// never open the circuit, or anyone who can make the hook refuse an input
/// (a made-up email) could shut it for every user of the tenant.
#[tokio::test]
async fn a_hook_refusing_inputs_never_opens_its_circuit() {
    fn tweak(s: &mut portcullis::config::Settings) {
        s.hooks.breaker_failures = 2;
        s.hooks.breaker_open_secs = 60;
        s.hooks.retries = 0;
    }
    let app = dev_app(None, Some(tweak)).await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&app, "hook-refusals").await;
    configure(&app, &hooks, PRE, "pre", 2000).await;
    let mut browser = Browser::new();
    for (behavior, reason) in [
        (Behavior::Status(404), "hook.bad_status"),
        (Behavior::Status(400), "hook.bad_status"),
        (Behavior::Garbage("<html>no</html>"), "hook.bad_answer"),
        (Behavior::Status(403), "hook.bad_status"),
    ] {
        hooks.behave("pre", behavior);
        let code = sign_in(&app, &mut browser, &rp, "cy@hooks.example").await;
        assert_eq!(redeem(&app, &rp, &code).await.unwrap_err().reason, reason);
    }
    assert_eq!(hooks.calls_to("pre").len(), 4, "every call went out");
    assert!(
        app.state.provider.hooks.as_ref().unwrap().breaker().is_empty(),
        "no circuit counts refusals"
    );
    hooks.behave("pre", Behavior::Answer(json!({})));
    let code = sign_in(&app, &mut browser, &rp, "cy@hooks.example").await;
    redeem(&app, &rp, &code).await.unwrap();
}

#[tokio::test]
async fn hooks_admin_api_shows_the_secret_once_refuses_bad_settings_and_removes() {
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let path = format!("/admin/v1/tenants/{DEMO}/hooks/{PRE}");
    let created = configure(&app, &hooks, PRE, "pre", 1500).await;
    assert_eq!(created["kind"], PRE);
    assert_eq!(created["timeout_ms"], 1500);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32);
    let (status, read) = app.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(read.get("secret").is_none(), "shown once only: {read}");
    assert_eq!(read["url"], hooks.url("pre"));
    let (_, list) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/{DEMO}/hooks"), None)
        .await;
    assert_eq!(list["hooks"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&secret));

    // Replacing without a secret keeps it (the receiver keeps verifying).
    let (status, replaced) = app
        .admin(Method::PUT, &path, Some(json!({"url": hooks.url("pre2")})))
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert!(replaced.get("secret").is_none());
    assert_eq!(replaced["timeout_ms"], 2000, "the default");
    let stored = app
        .state
        .provider
        .hooks
        .as_ref()
        .unwrap()
        .get(
            &portcullis::ids::TenantId::parse(DEMO).unwrap(),
            portcullis::hooks::HookKind::PreTokenGeneration,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.secret.expose(), secret);

    // Refusals name the field.
    for (body, field) in [
        (json!({"url": "ftp://hooks.example/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "https://user:pw@hooks.example/x"}), "url"),
        (json!({"url": "https://hooks.example/x", "secret": "short"}), "secret"),
        (json!({"url": "https://hooks.example/x", "timeout_ms": 5}), "timeout_ms"),
        (
            json!({"url": "https://hooks.example/x", "timeout_ms": 60000}),
            "timeout_ms",
        ),
        (json!({"url": "https://hooks.example/x", "extra": 1}), "extra"),
    ] {
        let (status, problem) = app.admin(Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let (status, _) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/{DEMO}/hooks/pre_token"),
            Some(json!({"url": "https://hooks.example/x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown kind");
    let (status, _) = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/tenants/nobody/hooks/{PRE}"),
            Some(json!({"url": "https://hooks.example/x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown tenant");

    // Audited, without the secret.
    let (_, log) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/{DEMO}/audit"), None)
        .await;
    let actions: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"hook.created") && actions.contains(&"hook.updated"),
        "{actions:?}"
    );
    assert!(!log.to_string().contains(&secret), "no secret in the audit log");

    // Removed: tokens are minted without calling it.
    let (status, _) = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let rp = register(&app, "hook-removed").await;
    let mut browser = Browser::new();
    let code = sign_in(&app, &mut browser, &rp, "rem@hooks.example").await;
    redeem(&app, &rp, &code).await.unwrap();
    assert!(hooks.calls().is_empty());
}

/// A credential in a hook URL's query (Azure Functions' `?code=`): the hook
/// is called with it, but the admin API shows the URL with `?…` instead,
/// the audit log records it so, and a failing call's log lines leave it out.
#[tokio::test]
async fn a_hook_urls_query_is_sent_but_never_shown_audited_or_logged() {
    const SECRET: &str = "abc123secret";
    let (logs, _guard) = Captured::start();
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let path = format!("/admin/v1/tenants/{DEMO}/hooks/{PRE}");
    let url = format!("{}?code={SECRET}", hooks.url("pre"));
    let shown = format!("{}?…", hooks.url("pre"));
    let (status, created) = app
        .admin(Method::PUT, &path, Some(json!({"url": url, "timeout_ms": 1000})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["url"], shown.as_str(), "{created}");
    hooks.set_secret(created["secret"].as_str().unwrap());
    // A replacement: audited with a before and an after.
    let (status, replaced) = app
        .admin(Method::PUT, &path, Some(json!({"url": url, "timeout_ms": 1500})))
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    let (status, read) = app.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["url"], shown.as_str(), "{read}");
    let (status, list) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/{DEMO}/hooks"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["hooks"][0]["url"], shown.as_str(), "{list}");
    let (status, log) = app
        .admin(Method::GET, &format!("/admin/v1/tenants/{DEMO}/audit"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let updated = app.tenant_audit(DEMO, "hook.updated").await;
    assert_eq!(updated[0]["before"]["url"], shown.as_str(), "{log}");
    assert_eq!(updated[0]["after"]["url"], shown.as_str(), "{log}");
    for answer in [&created, &replaced, &read, &list, &log] {
        assert!(!answer.to_string().contains(SECRET), "{answer}");
    }
    // What a read shows, sent back, is refused: the query would be lost.
    let (status, problem) = app.admin(Method::PUT, &path, Some(json!({"url": shown}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["field"], "url", "{problem}");

    // The hook is called with its whole URL.
    let rp = register(&app, "hook-query").await;
    let mut browser = Browser::new();
    let code = sign_in(&app, &mut browser, &rp, "q@hooks.example").await;
    redeem(&app, &rp, &code).await.unwrap();
    let calls = hooks.calls_to("pre");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].query.as_deref(), Some(format!("code={SECRET}").as_str()));

    // A call that fails (nobody listens there) is logged without the query.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (status, body) = app
        .admin(
            Method::PUT,
            &path,
            Some(json!({"url": format!("http://127.0.0.1:{closed}/hook/pre?code={SECRET}")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let code = sign_in(&app, &mut browser, &rp, "q@hooks.example").await;
    assert_eq!(redeem(&app, &rp, &code).await.unwrap_err().reason, "hook.unreachable");
    let failed = logs.with_reason("hook.unreachable");
    assert!(
        failed.iter().any(|l| l["fields"]["message"] == "hook call failed"),
        "{failed:?}"
    );
    let text = logs.text();
    assert!(text.contains(&format!("127.0.0.1:{closed}/hook/pre?…")), "{text}");
    assert!(!text.contains(SECRET), "a log line holds the URL's query:\n{text}");
}

#[tokio::test]
async fn a_tenant_key_configures_only_its_own_tenants_hooks() {
    let app = dev_app(None, None).await;
    app.create_tenant("hk-acme", "Acme", &[]).await;
    app.create_tenant("hk-globex", "Globex", &[]).await;
    let resp = app
        .client
        .post(app.url("/admin/v1/tenants/hk-acme/api-keys"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let key = resp.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    let put = |tenant: &str| {
        app.client
            .put(app.url(&format!("/admin/v1/tenants/{tenant}/hooks/{PRE}")))
            .bearer_auth(&key)
            .json(&json!({"url": "https://hooks.example/pre"}))
            .send()
    };
    assert_eq!(put("hk-acme").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(put("hk-globex").await.unwrap().status(), StatusCode::NOT_FOUND);
}

/// A pre-token hook that fails at a refresh consumes nothing: the app keeps
/// its refresh token (re-sending it once the hook recovers is not a reuse),
/// and a hook failing at the code grant leaves no refresh family behind.
#[tokio::test]
async fn failing_pre_token_hook_keeps_the_refresh_token_and_starts_no_family() {
    let app = dev_app(None, None).await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&app, "hook-keeps-refresh").await;
    configure(&app, &hooks, PRE, "pre", 2000).await;
    let mut browser = Browser::new();
    let code = sign_in(&app, &mut browser, &rp, "kim@hooks.example").await;
    let good = redeem(&app, &rp, &code).await.unwrap();
    let rt = good["refresh_token"].as_str().unwrap().to_owned();
    let sub = claims(good["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let families = portcullis::store::Key::tenant(DEMO, "users", format!("families:{sub}"));
    assert_eq!(app.state.store.set_members(&families).await.unwrap().len(), 1);

    // The hook fails at the refresh: the request fails, nothing is consumed.
    hooks.behave("pre", Behavior::Status(500));
    let e = refresh(&app, &rp, &rt).await.unwrap_err();
    assert_eq!(e.reason, "hook.bad_status");
    // It recovers: the same refresh token works (once), no reuse detected.
    hooks.behave("pre", Behavior::Answer(json!({})));
    let next = refresh(&app, &rp, &rt).await.unwrap();
    let rt2 = next["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt2, rt);
    refresh(&app, &rp, &rt2).await.unwrap();
    // The old one is used now: a reuse, as always.
    assert_eq!(refresh(&app, &rp, &rt).await.unwrap_err().reason, "refresh.reused");

    // At the code grant a failing hook starts no family.
    hooks.behave("pre", Behavior::Status(500));
    let code = sign_in(&app, &mut browser, &rp, "kim@hooks.example").await;
    assert_eq!(redeem(&app, &rp, &code).await.unwrap_err().reason, "hook.bad_status");
    assert_eq!(
        app.state.store.set_members(&families).await.unwrap().len(),
        1,
        "no family left for a failed code redemption"
    );
    // Nothing of the family the redemption named.
    let named = crate::revocation::family_named_by(&app, &code).await;
    assert_eq!(
        crate::revocation::family_left(&app, &named, &sub).await,
        (false, false),
        "family {named}"
    );
}

/// Two dev gateways over one Redis, with a long hook-configuration cache
/// (so that anything remembered for it would show).
async fn two_replicas() -> (TestApp, TestApp) {
    let prefix = crate::support::redis::prefix();
    let spawn = || {
        spawn_app(AppOptions {
            dev: true,
            redis_url: Some(crate::support::redis::url()),
            redis_prefix: Some(prefix.clone()),
            tweak: Some(|s| s.hooks.config_cache_secs = 60),
            ..AppOptions::default()
        })
    };
    (spawn().await, spawn().await)
}

/// A hook removed on one replica is not called by another: the next token
/// minted there is without it (the cached configuration is re-validated).
#[tokio::test]
async fn a_hook_removed_on_one_replica_is_not_called_by_another() {
    let (a, b) = two_replicas().await;
    let hooks = HookServer::start(system_clock()).await;
    let rp = register(&a, "hook-two-replicas").await;
    configure(&a, &hooks, PRE, "pre", 2000).await;
    hooks.behave(
        "pre",
        Behavior::Answer(json!({"access_token": {"claims_to_add_or_override": {"plan": "gold"}}})),
    );
    let mut browser = Browser::new();

    // Replica B mints with the hook (and caches its configuration).
    let code = sign_in(&b, &mut browser, &rp, "rex@hooks.example").await;
    let first = redeem(&b, &rp, &code).await.unwrap();
    assert_eq!(claims(first["access_token"].as_str().unwrap())["plan"], "gold");
    assert_eq!(hooks.calls_to("pre").len(), 1);

    // Removed on replica A: B's next token is minted without it at once.
    let (status, _) = a
        .admin(Method::DELETE, &format!("/admin/v1/tenants/{DEMO}/hooks/{PRE}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let next = refresh(&b, &rp, first["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert!(claims(next["access_token"].as_str().unwrap()).get("plan").is_none());
    assert_eq!(hooks.calls_to("pre").len(), 1, "the removed hook is not called");
}

/// A hook added on one replica is called by another from its next token on,
/// although that replica had just found (and cached) no hook: an absence is
/// re-validated on every use, not kept for `[hooks] config_cache_secs`.
#[tokio::test]
async fn a_hook_added_on_one_replica_is_called_by_another_at_once() {
    let (a, b) = two_replicas().await;
    let hooks = HookServer::start(system_clock()).await;
    hooks.behave(
        "pre",
        Behavior::Answer(json!({"access_token": {"claims_to_add_or_override": {"plan": "gold"}}})),
    );
    let rp = register(&a, "hook-added-two-replicas").await;
    let mut browser = Browser::new();

    // Replica B mints without a hook (and remembers that there is none).
    let code = sign_in(&b, &mut browser, &rp, "ida@hooks.example").await;
    let first = redeem(&b, &rp, &code).await.unwrap();
    assert!(claims(first["access_token"].as_str().unwrap()).get("plan").is_none());

    // Added on replica A: B's next token goes through it at once.
    configure(&a, &hooks, PRE, "pre", 2000).await;
    let next = refresh(&b, &rp, first["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims(next["access_token"].as_str().unwrap())["plan"], "gold");
    assert_eq!(hooks.calls_to("pre").len(), 1, "the added hook is called");
}

/// Redeems `code` in a task while the pre-token hook holds it (after the
/// code was taken, before anything is minted or started), replays the code
/// meanwhile, then lets the first redemption go on: answers (first, replay).
async fn replay_while_minting(
    app: &Arc<TestApp>,
    hooks: &HookServer,
    rp: &Rp,
    code: Code,
) -> (Result<Value, OAuthError>, Result<Value, OAuthError>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    hooks.behave("pre", Behavior::Hold(gate.clone()));
    let before = hooks.calls_to("pre").len();
    let replayed = Code {
        code: code.code.clone(),
        verifier: code.verifier.clone(),
    };
    let first = {
        let app = app.clone();
        let rp = Rp {
            client_id: rp.client_id.clone(),
            secret: rp.secret.clone(),
            redirect: rp.redirect.clone(),
        };
        tokio::spawn(async move { redeem(&app, &rp, &code).await })
    };
    let start = std::time::Instant::now();
    while hooks.calls_to("pre").len() == before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the redemption never reached the hook"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replay = redeem(app, rp, &replayed).await;
    gate.add_permits(1);
    (first.await.unwrap(), replay)
}

#[tokio::test]
async fn a_code_replayed_while_its_first_redemption_mints_leaves_no_token_alive() {
    // Over Redis: the family's tombstone and its start are Lua scripts.
    let app = Arc::new(
        spawn_app(AppOptions {
            dev: true,
            redis_url: Some(crate::support::redis::url()),
            redis_prefix: Some(crate::support::redis::prefix()),
            ..AppOptions::default()
        })
        .await,
    );
    let hooks = HookServer::start(system_clock()).await;
    configure(&app, &hooks, PRE, "pre", 10_000).await;
    let mut browser = Browser::new();

    // An app with refresh tokens: the family named in the code's marker is
    // forbidden by the replay before it starts, so the first redemption
    // fails as a reuse and issues nothing.
    let rp = register(&app, "replayed-while-minting").await;
    let code = sign_in(&app, &mut browser, &rp, "lee@hooks.example").await;
    let replayed = Code {
        code: code.code.clone(),
        verifier: code.verifier.clone(),
    };
    let (first, replay) = replay_while_minting(&app, &hooks, &rp, code).await;
    assert_eq!(replay.unwrap_err().reason, "code.reused");
    assert_eq!(first.unwrap_err().reason, "code.reused");
    // What the first redemption named: never started, in no index (its
    // entries, sent with the refused start, were tidied), and a tombstone
    // that keeps it from ever starting.
    let named = crate::revocation::family_named_by(&app, &replayed).await;
    hooks.behave("pre", Behavior::Answer(json!({})));
    let code = sign_in(&app, &mut browser, &rp, "lee@hooks.example").await;
    let good = redeem(&app, &rp, &code).await.unwrap();
    let sub = claims(good["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        crate::revocation::family_left(&app, &named, &sub).await,
        (false, false),
        "family {named}"
    );
    let key = |f: &str, name: &str| portcullis::store::Key::tenant(DEMO, &format!("rf:{f}"), name);
    assert!(app.state.store.get(&key(&named, "forbidden")).await.unwrap().is_some());
    let index = portcullis::store::Key::tenant(DEMO, "users", format!("families:{sub}"));
    let families = app.state.store.set_members(&index).await.unwrap();
    assert_eq!(families.len(), 1, "only the good redemption's family: {families:?}");
    assert!(app
        .state
        .store
        .get(&key(&families[0], "family"))
        .await
        .unwrap()
        .is_some());

    // An app without refresh tokens: the first redemption answers, and the
    // access token it signed after the replay is already revoked (its
    // `jti` was named in the marker and denied by the replay).
    let created = app
        .admin_create(
            "/admin/v1/clients",
            json!({
                "client_id": "no-refresh-replayed",
                "name": "no-refresh-replayed",
                "redirect_uris": ["https://no-refresh-replayed.example.test/cb"],
                "grant_types": ["authorization_code"],
            }),
        )
        .await;
    let rp = Rp {
        client_id: "no-refresh-replayed".into(),
        secret: created["client_secret"].as_str().unwrap().to_owned(),
        redirect: Url::parse("https://no-refresh-replayed.example.test/cb").unwrap(),
    };
    let code = sign_in(&app, &mut browser, &rp, "lee@hooks.example").await;
    let (first, replay) = replay_while_minting(&app, &hooks, &rp, code).await;
    assert_eq!(replay.unwrap_err().reason, "code.reused");
    let first = first.unwrap();
    assert!(first.get("refresh_token").is_none(), "{first}");
    let at = first["access_token"].as_str().unwrap();
    assert_eq!(
        app.state.provider.check_access_token(at).await.unwrap_err().reason,
        "token.revoked"
    );
}
