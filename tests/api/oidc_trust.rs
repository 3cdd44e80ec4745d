//! What the upstream OIDC IdP says is believed, and only that: `max_age`,
//! `prompt=login` and `auth_time` go upstream and come back honestly, and the
//! app's refresh notices when the IdP stops vouching for the user. Against
//! the real `oidc-provider` peer (some runs told to behave like IdPs that
//! ignore `prompt=login`/`max_age` or omit `auth_time`), real Redis, and a
//! gateway clock the test moves.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Duration;
use portcullis::clock::{Clock, ManualClock, SystemClock};
use serde_json::{json, Value};
use std::collections::HashMap;
use url::Url;

use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Nav};
use crate::support::oidc_world::{random_token, OAuthResponse, Pkce, RawClient, ACME, CONN};
use crate::support::peers::{IdpClient, UpstreamIdp, IDP_PASSWORD};
use crate::support::redis;

/// A gateway with one OIDC connection to the peer and one raw client.
pub struct Trust {
    pub app: TestApp,
    pub idp: UpstreamIdp,
    /// The gateway's registration at the IdP (another IdP may be started
    /// with it).
    pub upstream: IdpClient,
    pub clock: ManualClock,
    pub client: RawClient,
    pub discovery: Value,
}

impl Trust {
    /// Starts the peer with `idp_flags` and the gateway with a manual clock
    /// at the real time; `connection` adds fields to the connection body.
    pub async fn new(idp_flags: &[&str], scopes: &[&str], connection: Value) -> Self {
        Self::with_options(idp_flags, scopes, connection, AppOptions::default()).await
    }

    /// [`Trust::new`] with more of the gateway's options (a store wrapper,
    /// settings tweaked); its store and clock are the world's.
    pub async fn with_options(idp_flags: &[&str], scopes: &[&str], connection: Value, options: AppOptions) -> Self {
        let clock = ManualClock::at(SystemClock.now());
        let app = spawn_app(AppOptions {
            redis_url: Some(redis::url()),
            redis_prefix: Some(redis::prefix()),
            clock: Some(clock.clone()),
            ..options
        })
        .await;
        app.create_tenant(ACME, "Acme Corp", &["acme.test"]).await;
        let upstream = IdpClient {
            client_id: "portcullis-acme".into(),
            client_secret: format!("secret-{}", random_token()),
            redirect_uris: vec![app.oidc_callback(ACME, CONN)],
        };
        let idp = UpstreamIdp::spawn_with(0, std::slice::from_ref(&upstream), idp_flags).await;
        let mut body = json!({
            "id": CONN,
            "kind": "oidc",
            "issuer": idp.issuer(),
            "client_id": upstream.client_id,
            "client_secret": upstream.client_secret,
            "scopes": scopes,
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), connection.as_object()) {
            body.extend(extra.clone());
        }
        app.admin_create(&format!("/admin/v1/tenants/{ACME}/connections"), body)
            .await;
        let redirect_uri = Url::parse("http://127.0.0.1:9/raw/callback").unwrap();
        let reg = app.create_client("raw", "Raw", &[&redirect_uri], false).await;
        let discovery = app.get_json("/.well-known/openid-configuration").await;
        Self {
            app,
            idp,
            upstream,
            clock,
            client: RawClient { reg, redirect_uri },
            discovery,
        }
    }

    fn endpoint(&self, name: &str) -> Url {
        Url::parse(self.discovery[name].as_str().unwrap()).unwrap()
    }

    /// Runs `/authorize` with `extra` and returns the query of the redirect
    /// back to the app, signing `user` in when the IdP shows its login form.
    /// Panics when the form is shown and `user` is `None`.
    pub async fn authorize(
        &self,
        browser: &mut Browser,
        pkce: &Pkce,
        extra: &[(&str, &str)],
        user: Option<&str>,
    ) -> HashMap<String, String> {
        let mut url = self.endpoint("authorization_endpoint");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client.reg.client_id)
            .append_pair("redirect_uri", self.client.redirect_uri.as_str())
            .append_pair("scope", "openid email profile offline_access")
            .append_pair("tenant", ACME)
            .append_pair("state", "st")
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .extend_pairs(extra);
        let prefix = self.client.redirect_uri.as_str().to_owned();
        let stop = move |u: &Url| u.as_str().starts_with(&prefix);
        let back = match browser.get_until(&url, &stop).await {
            Nav::Stopped(back) => back,
            Nav::Page(page) => {
                let user = user.unwrap_or_else(|| panic!("the IdP asked for a login:\n{}", browser.trail()));
                assert!(
                    self.idp.serves(&page.url),
                    "unexpected page {}:\n{}",
                    page.url,
                    page.body
                );
                let mut form = page.form(Some("login"));
                form.set("username", user);
                form.set("password", IDP_PASSWORD);
                browser.submit_until(&page, &form, &stop).await.stopped()
            }
        };
        back.query_pairs().into_owned().collect()
    }

    /// Signs `user` in (login form expected) and redeems the code.
    pub async fn tokens(&self, browser: &mut Browser, extra: &[(&str, &str)], user: Option<&str>) -> Value {
        let pkce = Pkce::new();
        let q = self.authorize(browser, &pkce, extra, user).await;
        let code = q.get("code").unwrap_or_else(|| panic!("no code: {q:?}"));
        let r = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.client.redirect_uri.as_str()),
                ("code_verifier", &pkce.verifier),
            ])
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    /// A token request as the raw client.
    pub async fn token(&self, form: &[(&str, &str)]) -> OAuthResponse {
        let resp = self
            .app
            .client
            .post(self.endpoint("token_endpoint"))
            .basic_auth(&self.client.reg.client_id, Some(self.client.secret()))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        OAuthResponse {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// The app's refresh grant.
    pub async fn refresh(&self, refresh_token: &str) -> OAuthResponse {
        self.token(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)])
            .await
    }
}

/// The claims of a JWT, unverified (the gateway's own tokens are verified elsewhere).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn refused(q: &HashMap<String, String>, reason: &str) {
    assert_eq!(q.get("error").map(String::as_str), Some("login_required"), "{q:?}");
    assert!(!q.contains_key("code"), "{q:?}");
    let description = q.get("error_description").cloned().unwrap_or_default();
    assert!(description.contains(reason), "{reason} not in {description:?}");
}

#[tokio::test]
async fn the_id_token_auth_time_is_the_idps_not_the_callbacks() {
    let w = Trust::new(&[], &["openid", "email", "profile"], json!({})).await;
    // The gateway's clock runs five minutes ahead of the IdP's: the callback
    // happens "later" than the authentication the IdP reports.
    w.clock.advance(Duration::seconds(300));
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    let claims = jwt_claims(tokens["id_token"].as_str().unwrap());
    let auth_time = claims["auth_time"].as_i64().unwrap();
    let real_now = SystemClock.unix();
    assert!(
        auth_time <= real_now && auth_time > real_now - 30,
        "auth_time {auth_time} is not the IdP's (real now {real_now}, gateway {})",
        w.clock.unix()
    );
}

#[tokio::test]
async fn max_age_is_forwarded_and_the_idp_authenticates_again() {
    let w = Trust::new(&[], &["openid", "email", "profile"], json!({})).await;
    let mut browser = Browser::new();
    let first = w.tokens(&mut browser, &[], Some("alice")).await;
    let first = jwt_claims(first["id_token"].as_str().unwrap())["auth_time"]
        .as_i64()
        .unwrap();
    let logins = w.idp.stats().await.logins;
    // Both clocks move on two seconds; the app wants an authentication of
    // at most one second ago.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    w.clock.advance(Duration::seconds(2));
    let tokens = w.tokens(&mut browser, &[("max_age", "1")], Some("alice")).await;
    assert_eq!(w.idp.stats().await.logins, logins + 1, "the IdP saw max_age");
    let auth_time = jwt_claims(tokens["id_token"].as_str().unwrap())["auth_time"]
        .as_i64()
        .unwrap();
    assert!(auth_time > first, "a new authentication: {auth_time} after {first}");
}

#[tokio::test]
async fn prompt_login_ignored_by_the_idp_is_refused() {
    let w = Trust::new(&["--ignore-reauth"], &["openid", "email", "profile"], json!({})).await;
    let mut browser = Browser::new();
    w.tokens(&mut browser, &[], Some("alice")).await;
    // Beyond the clock skew: the IdP's session is two minutes old.
    w.clock.advance(Duration::seconds(120));
    let q = w
        .authorize(&mut browser, &Pkce::new(), &[("prompt", "login")], None)
        .await;
    refused(&q, "login.auth_too_old");
    let q = w.authorize(&mut browser, &Pkce::new(), &[("max_age", "0")], None).await;
    refused(&q, "login.auth_too_old");
}

#[tokio::test]
async fn max_age_ignored_by_the_idp_is_refused() {
    let w = Trust::new(&["--ignore-reauth"], &["openid", "email", "profile"], json!({})).await;
    let mut browser = Browser::new();
    w.tokens(&mut browser, &[], Some("alice")).await;
    w.clock.advance(Duration::seconds(300));
    let q = w
        .authorize(&mut browser, &Pkce::new(), &[("max_age", "120")], None)
        .await;
    refused(&q, "login.auth_too_old");
    // Within max_age (plus skew) the same IdP session is fine.
    let q = w
        .authorize(&mut browser, &Pkce::new(), &[("max_age", "600")], None)
        .await;
    assert!(q.contains_key("code"), "{q:?}");
}

/// An app's `max_age` is a whole number of seconds from 0 to i64::MAX:
/// anything else (negative, beyond i64, a fraction, an exponent) is
/// `invalid_request` (`authorize.max_age`) before the IdP is asked; the
/// largest is any age and reuses the SSO session, with no overflow in the
/// age check.
#[tokio::test]
async fn max_age_out_of_range_is_invalid_and_the_largest_is_any_age() {
    let w = Trust::new(&[], &["openid", "email", "profile"], json!({})).await;
    let mut browser = Browser::new();
    w.tokens(&mut browser, &[], Some("alice")).await;
    w.clock.advance(Duration::seconds(300));
    let before = w.idp.stats().await.authorize;
    for bad in ["-1", "9223372036854775808", "1.5", "1e3"] {
        let q = w.authorize(&mut browser, &Pkce::new(), &[("max_age", bad)], None).await;
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_request"),
            "{bad}: {q:?}"
        );
        assert!(
            q.get("error_description").is_some_and(|d| d.contains("max_age")),
            "{bad}: {q:?}"
        );
    }
    let q = w
        .authorize(&mut browser, &Pkce::new(), &[("max_age", "9223372036854775807")], None)
        .await;
    assert!(q.contains_key("code"), "{q:?}");
    assert_eq!(w.idp.stats().await.authorize, before, "the SSO session was reused");
}

#[tokio::test]
async fn max_age_without_auth_time_from_the_idp_is_refused() {
    let w = Trust::new(
        &["--ignore-reauth", "--no-auth-time"],
        &["openid", "email", "profile"],
        json!({}),
    )
    .await;
    let mut browser = Browser::new();
    // Without max_age nothing is asked of auth_time.
    w.tokens(&mut browser, &[], Some("alice")).await;
    let q = w
        .authorize(
            &mut browser,
            &Pkce::new(),
            &[("max_age", "3600"), ("prompt", "login")],
            None,
        )
        .await;
    refused(&q, "login.auth_time_unknown");
}

/// An IdP that does not date its authentication leaves an SSO session whose
/// `auth_time` is only when its answer arrived: reused without `max_age`,
/// never for it (the IdP is asked, and its undated answer refused).
#[tokio::test]
async fn an_sso_session_from_an_undated_authentication_is_not_reused_for_max_age() {
    let w = Trust::new(
        &["--ignore-reauth", "--no-auth-time"],
        &["openid", "email", "profile"],
        json!({}),
    )
    .await;
    let mut browser = Browser::new();
    w.tokens(&mut browser, &[], Some("alice")).await;
    let before = w.idp.stats().await.authorize;
    let q = w.authorize(&mut browser, &Pkce::new(), &[], None).await;
    assert!(q.contains_key("code"), "{q:?}");
    assert_eq!(w.idp.stats().await.authorize, before, "reused without max_age");
    let q = w
        .authorize(&mut browser, &Pkce::new(), &[("max_age", "3600")], None)
        .await;
    assert!(
        w.idp.stats().await.authorize > before,
        "the undated SSO session was reused"
    );
    refused(&q, "login.auth_time_unknown");
}

impl Trust {
    /// The app's refresh grant through the provider itself, to read the
    /// reason code of a refusal (the HTTP answer carries only the RFC code).
    pub async fn refresh_direct(&self, refresh_token: &str) -> Result<(), portcullis::provider::OAuthError> {
        let provider = &self.app.state.provider;
        let client = provider.clients.get(&self.client.reg.client_id).await.unwrap().unwrap();
        let req = portcullis::provider::grants::TokenRequest {
            grant_type: Some("refresh_token".into()),
            refresh_token: Some(refresh_token.into()),
            ..Default::default()
        };
        provider.token(&client, &req).await.map(|_| ())
    }
}

const REFRESHING: &[&str] = &["openid", "email", "profile"];

fn rt(v: &Value) -> String {
    v["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh_token: {v}"))
        .to_owned()
}

#[tokio::test]
async fn the_apps_refresh_refreshes_upstream_after_the_interval() {
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    // Within the interval the IdP is not asked.
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 0);
    // After it (default one hour), the app's refresh refreshes upstream once.
    w.clock.advance(Duration::seconds(3601));
    let r = w.refresh(&rt(&r.body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 1);
    let r = w.refresh(&rt(&r.body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        w.idp.stats().await.refresh,
        1,
        "the new upstream session counts from now"
    );
}

#[tokio::test]
async fn a_user_removed_at_the_idp_stops_getting_tokens() {
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let first = w.tokens(&mut browser, &[], Some("alice")).await;
    // A second family in the same SSO session (no new login at the IdP).
    let second = w.tokens(&mut browser, &[], None).await;
    w.idp.remove_account("alice").await;
    w.clock.advance(Duration::seconds(3601));

    let err = w.refresh_direct(&rt(&first)).await.unwrap_err();
    assert_eq!(err.code.as_str(), "invalid_grant");
    assert_eq!(err.reason, "refresh.upstream_refused");
    // Every family of the SSO session is gone, and the SSO session too.
    let r = w.refresh(&rt(&second)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error(), Some("invalid_grant"));
    let r = w.refresh(&rt(&first)).await;
    assert_eq!(r.error(), Some("invalid_grant"));
    let q = w
        .authorize(&mut browser, &Pkce::new(), &[("prompt", "none")], None)
        .await;
    assert_eq!(q.get("error").map(String::as_str), Some("login_required"), "{q:?}");
}

#[tokio::test]
async fn a_transient_idp_failure_fails_the_refresh_without_revoking() {
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    w.clock.advance(Duration::seconds(3601));
    w.idp.fail_next_token(503).await;
    let err = w.refresh_direct(&rt(&tokens)).await.unwrap_err();
    assert_eq!(err.code.as_str(), "temporarily_unavailable");
    assert_eq!(err.reason, "refresh.upstream_unavailable");
    w.idp.fail_next_token(502).await;
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), Some("temporarily_unavailable"));
    // Nothing was consumed or revoked: the same token works once the IdP is back.
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 1);
}

#[tokio::test]
async fn concurrent_app_refreshes_spend_the_upstream_token_once() {
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let a = w.tokens(&mut browser, &[], Some("alice")).await;
    let b = w.tokens(&mut browser, &[], None).await;
    w.clock.advance(Duration::seconds(3601));
    let (a, b) = (rt(&a), rt(&b));
    let (ra, rb) = tokio::join!(w.refresh(&a), w.refresh(&b));
    let stats = w.idp.stats().await;
    assert_eq!(
        (ra.status, rb.status, stats.refresh),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK, 1),
        "{:?} {:?} {stats:?}",
        ra.body,
        rb.body
    );
}

/// A world refreshing upstream on a store that can hold a write, with two
/// refresh tokens (two families) of one SSO session of alice's.
async fn two_families_over_a_held_store(
    tweak: Option<fn(&mut portcullis::config::Settings)>,
) -> (crate::support::held_store::Hold, Trust, String, String) {
    let hold = crate::support::held_store::Hold::default();
    let w = Trust::with_options(
        &[],
        REFRESHING,
        json!({ "refresh_upstream": true }),
        AppOptions {
            wrap_store: Some(hold.wrap()),
            tweak,
            ..AppOptions::default()
        },
    )
    .await;
    let mut browser = Browser::new();
    let a = rt(&w.tokens(&mut browser, &[], Some("alice")).await);
    let b = rt(&w.tokens(&mut browser, &[], None).await);
    (hold, w, a, b)
}

/// A refresh of a session whose IdP is being asked by another refresh (the
/// lock's holder) waits for that answer and is decided by it: the IdP
/// refused (the person was removed there), so the concurrent refresh of the
/// session's other family is refused too (`refresh.upstream_refused`), not
/// served on the hour-old answer meanwhile. The holder is held, after the
/// IdP's refusal, at the write that ends the session. Before, the
/// concurrent refresh got fresh tokens while the lock was held.
#[tokio::test]
async fn a_concurrent_refresh_waits_for_the_idps_refusal_and_is_refused_with_it() {
    let (hold, w, a, b) = two_families_over_a_held_store(None).await;
    let provider = &w.app.state.provider;
    let sid = provider.peek_refresh(&a).await.unwrap().unwrap().authz.sid;
    assert_eq!(
        provider.peek_refresh(&b).await.unwrap().unwrap().authz.sid,
        sid,
        "one SSO session"
    );
    w.idp.remove_account("alice").await;
    w.clock.advance(Duration::seconds(3601));

    let held = hold.arm_any(&format!("ended:{sid}"));
    let (first, second) = tokio::join!(w.refresh_direct(&a), async {
        held.arrived.await.unwrap();
        // The first refresh holds the lock, the IdP's refusal in hand.
        let second = w.refresh_direct(&b);
        tokio::pin!(second);
        let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut second).await;
        assert!(early.is_err(), "answered before the IdP's answer was known: {early:?}");
        held.release.send(()).unwrap();
        second.await
    });
    for (which, got) in [("holder", first), ("waiter", second)] {
        let err = got.expect_err(which);
        assert_eq!(
            (err.code.as_str(), err.reason),
            ("invalid_grant", "refresh.upstream_refused"),
            "{which}"
        );
    }
    let r = w.refresh(&b).await;
    assert_eq!(r.error(), Some("invalid_grant"), "{:?}", r.body);
}

/// A refresh that waits for another refresh of the session to hear from
/// the IdP waits at most one outbound request's timeout (2 s here): then it
/// is `temporarily_unavailable` (`refresh.upstream_in_progress`) and
/// consumes nothing. One waiting when the holder's answer (the IdP still
/// vouches) is written is served on it, without asking the IdP again.
#[tokio::test]
async fn a_refresh_waits_for_a_concurrent_ones_answer_at_most_the_outbound_timeout() {
    let (hold, w, a, b) = two_families_over_a_held_store(Some(|s| s.outbound.timeout_secs = 2)).await;
    let sid = w.app.state.provider.peek_refresh(&a).await.unwrap().unwrap().authz.sid;
    w.clock.advance(Duration::seconds(3601));

    // The holder is held after the IdP vouched, before its answer is kept.
    let held = hold.arm_any(&format!("upstream:{sid}"));
    let (first, ()) = tokio::join!(w.refresh_direct(&a), async {
        held.arrived.await.unwrap();
        let started = std::time::Instant::now();
        let err = w.refresh_direct(&b).await.unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.reason),
            ("temporarily_unavailable", "refresh.upstream_in_progress")
        );
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(10),
            "{waited:?}"
        );
        // The next one waits and is served on the holder's answer.
        let third = w.refresh_direct(&b);
        tokio::pin!(third);
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut third).await;
        assert!(early.is_err(), "answered before the IdP's answer was kept: {early:?}");
        held.release.send(()).unwrap();
        third.await.unwrap();
    });
    first.unwrap();
    assert_eq!(w.idp.stats().await.refresh, 1, "the IdP was asked once");
}

#[tokio::test]
async fn the_refresh_interval_is_per_connection_and_offline_access_only_when_asked() {
    // A connection with its own interval.
    let w = Trust::new(
        &[],
        REFRESHING,
        json!({ "refresh_upstream": true, "refresh_interval_secs": 120 }),
    )
    .await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    w.clock.advance(Duration::seconds(121));
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 1);
    // And again after the next interval, with the token the IdP handed back.
    w.clock.advance(Duration::seconds(121));
    let r = w.refresh(&rt(&r.body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 2);

    // Without refresh_upstream the IdP issues no refresh token, and nothing
    // is asked upstream.
    let w = Trust::new(&[], REFRESHING, json!({})).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    w.clock.advance(Duration::seconds(7200));
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 0);
}

#[tokio::test]
async fn the_sso_sessions_hard_end_caps_its_refresh_families() {
    let w = Trust::new(&[], REFRESHING, json!({})).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    let provider = &w.app.state.provider;
    let family = provider.peek_refresh(&rt(&tokens)).await.unwrap().unwrap();
    // As a SAML login with SessionNotOnOrAfter ten minutes ahead would carry it.
    let now = w.clock.unix();
    let mut authz = family.authz.clone();
    authz.session_expires_at = Some(now + 600);
    let (capped, token) = provider
        .start_family(&authz, portcullis::provider::Provider::new_family_id())
        .await
        .unwrap()
        .started
        .expect("a family nobody forbade starts");
    assert_eq!(capped.expires_at, now + 600);
    let r = w.refresh(&token).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = rt(&r.body);
    w.clock.advance(Duration::seconds(601));
    let err = w.refresh_direct(&token).await.unwrap_err();
    assert_eq!((err.code.as_str(), err.reason), ("invalid_grant", "refresh.unknown"));
    // The uncapped family of the same login lives on.
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

// The connector's negative cases a real provider can express (the
// scriptable fake keeps only what no real provider emits).

impl Trust {
    /// The authorization URL of the raw client with `extra`.
    fn authorize_url(&self, pkce: &Pkce, extra: &[(&str, &str)]) -> Url {
        let mut url = self.endpoint("authorization_endpoint");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client.reg.client_id)
            .append_pair("redirect_uri", self.client.redirect_uri.as_str())
            .append_pair("scope", "openid email")
            .append_pair("tenant", ACME)
            .append_pair("state", "st")
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .extend_pairs(extra);
        url
    }
}

#[tokio::test]
async fn cancelling_at_the_real_idp_reaches_the_app_as_access_denied() {
    let w = Trust::new(&[], REFRESHING, json!({})).await;
    let mut browser = Browser::new();
    let page = browser.get(&w.authorize_url(&Pkce::new(), &[])).await;
    assert!(w.idp.serves(&page.url), "{}", browser.trail());
    let form = page.form(Some("abort"));
    let prefix = w.client.redirect_uri.as_str().to_owned();
    let back = browser
        .submit_until(&page, &form, &move |u: &Url| u.as_str().starts_with(&prefix))
        .await
        .stopped();
    let q: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"), "{q:?}");
    assert!(q["error_description"].contains("cancelled"), "{q:?}");
    assert_eq!(w.idp.stats().await.token, 0, "nothing was exchanged");
}

#[tokio::test]
async fn a_callback_whose_rfc9207_iss_is_not_the_real_idps_is_refused() {
    let w = Trust::new(&[], REFRESHING, json!({})).await;
    let mut browser = Browser::new();
    let callback = w.app.oidc_callback(ACME, CONN).to_string();
    let at_callback = move |u: &Url| u.as_str().starts_with(&callback);
    let page = browser.get(&w.authorize_url(&Pkce::new(), &[])).await;
    let mut form = page.form(Some("login"));
    form.set("username", "alice");
    form.set("password", IDP_PASSWORD);
    let answer = browser.submit_until(&page, &form, &at_callback).await.stopped();
    let mut params: Vec<(String, String)> = answer.query_pairs().into_owned().collect();
    // oidc-provider sends iss (it advertises RFC 9207); a mix-up attacker's
    // answer names another issuer.
    let iss = params
        .iter_mut()
        .find(|(k, _)| k == "iss")
        .expect("the real IdP sends iss");
    iss.1 = "https://attacker.example".into();
    let mut tampered = answer.clone();
    tampered.query_pairs_mut().clear().extend_pairs(&params);
    let prefix = w.client.redirect_uri.as_str().to_owned();
    let back = browser
        .get_until(&tampered, &move |u: &Url| u.as_str().starts_with(&prefix))
        .await
        .stopped();
    let q: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"), "{q:?}");
    assert!(!q.contains_key("code"));
    assert_eq!(w.idp.stats().await.token, 0, "the code was not sent anywhere");
}

#[tokio::test]
async fn the_upstream_refresh_token_is_kept_with_the_session_and_forgotten_at_sign_out() {
    use portcullis::store::Key;
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    let sid = jwt_claims(tokens["id_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = Key::tenant(ACME, "sso", format!("upstream:{sid}"));
    let store = &w.app.state.store;
    let record: Value = serde_json::from_slice(&store.get(&key).await.unwrap().expect("kept")).unwrap();
    assert_eq!(record["connection"], json!(CONN));
    assert_eq!(record["refreshed_at"], json!(w.clock.unix()));
    assert!(record["refresh_token"].as_str().is_some_and(|t| !t.is_empty()));
    // The admin API's view of the connection carries no token.
    let (_, connection) = w
        .app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/tenants/{ACME}/connections/{CONN}"),
            None,
        )
        .await;
    let shown = connection.to_string();
    assert!(!shown.contains(record["refresh_token"].as_str().unwrap()), "{shown}");
    assert_eq!(connection["id"], json!(CONN), "{shown}");

    let sso = std::collections::BTreeMap::from([(ACME.to_owned(), sid)]);
    w.app.state.broker.logout(&sso, None).await.unwrap();
    assert!(store.get(&key).await.unwrap().is_none(), "forgotten at sign-out");
}

/// `PUT /admin/v1/tenants/acme/mfa {"required": true}`.
async fn require_mfa(app: &TestApp) {
    let (status, body) = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/tenants/{ACME}/mfa"),
            Some(json!({ "required": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn mfa_required_is_refused_when_the_idp_ignores_acr_values() {
    let w = Trust::new(&[], &["openid", "email", "profile"], json!({})).await;
    require_mfa(&w.app).await;
    let mut browser = Browser::new();
    let q = w.authorize(&mut browser, &Pkce::new(), &[], Some("alice")).await;
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"), "{q:?}");
    assert!(!q.contains_key("code"), "{q:?}");
    let description = q.get("error_description").cloned().unwrap_or_default();
    assert!(description.contains("login.mfa_required"), "{description:?}");
}

#[tokio::test]
async fn mfa_required_is_asked_for_and_accepted_when_the_idp_reports_it() {
    let w = Trust::new(
        &["--honour-mfa"],
        &["openid", "email", "profile"],
        json!({ "acr_values": ["urn:example:mfa"] }),
    )
    .await;
    let mut browser = Browser::new();
    // Not required yet: a password login, no acr asked for or reported.
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    let claims = jwt_claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["pwd"]), "{claims}");
    assert!(claims.get("acr").is_none(), "{claims}");
    // Required: the SSO session without MFA is not reused (the IdP is asked
    // again); the IdP's own password-only session does not show MFA: refused.
    require_mfa(&w.app).await;
    let before = w.idp.stats().await.authorize;
    let q = w.authorize(&mut browser, &Pkce::new(), &[], None).await;
    assert!(
        w.idp.stats().await.authorize > before,
        "the password-only SSO session was reused"
    );
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"), "{q:?}");
    assert!(
        q.get("error_description")
            .is_some_and(|d| d.contains("login.mfa_required")),
        "{q:?}"
    );
    // A new authentication, asked for with acr_values, shows MFA: accepted,
    // and the ID token says how.
    let mut fresh = Browser::new();
    let tokens = w.tokens(&mut fresh, &[], Some("alice")).await;
    let claims = jwt_claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(claims["acr"], "urn:example:mfa", "{claims}");
    assert_eq!(claims["amr"], json!(["pwd", "otp"]), "{claims}");
}

/// An upstream session kept from one issuer's sign-in is never sent to
/// another: when the connection names another issuer than the one that
/// signed the person in, the app's refresh ends the SSO session without
/// asking anyone (`refresh.upstream_issuer_changed` in the log), instead of
/// sending the old IdP's refresh token, with our client secret, to the new
/// one. (Here the kept session says it came from another issuer.)
#[tokio::test]
async fn an_upstream_session_is_never_sent_to_another_issuer() {
    use portcullis::store::{Key, StoreJson as _};
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    let claims: Value = {
        use base64::Engine as _;
        let payload = tokens["id_token"].as_str().unwrap().split('.').nth(1).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    let key = Key::tenant(ACME, "sso", format!("upstream:{}", claims["sid"].as_str().unwrap()));
    let store = &w.app.state.store;
    let mut kept: Value = store.get_json(&key).await.unwrap().expect("an upstream session");
    assert_eq!(
        kept["issuer"].as_str(),
        Some(w.idp.peer.url.as_str().trim_end_matches('/')),
        "the issuer that signed in: {kept}"
    );
    kept["issuer"] = json!("https://old-idp.example");
    store.put_json(&key, &kept, None).await.unwrap();

    w.clock.advance(Duration::seconds(3601));
    let err = w.refresh_direct(&rt(&tokens)).await.unwrap_err();
    assert_eq!(err.code.as_str(), "invalid_grant");
    assert_eq!(err.reason, "refresh.upstream_refused");
    assert_eq!(w.idp.stats().await.refresh, 0, "the token went to no IdP");
    assert!(store.get(&key).await.unwrap().is_none(), "the kept token is gone");
}

/// A connection deleted and created again under the same id (here in the
/// registry only, as if the eager clean-up of its users, sessions and
/// families had not run; acceptance never depends on it) is another
/// connection: the upstream session kept from a sign-in through the first
/// one is never sent to the second's token endpoint, even at the same IdP
/// with the same client. The app's refresh is refused by the liveness
/// check (`refresh.user_superseded`) before the IdP is asked; it used to be
/// asked first.
#[tokio::test]
async fn an_upstream_session_is_never_sent_through_a_re_created_connection() {
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;

    let tenant = portcullis::ids::TenantId::parse(ACME).unwrap();
    let conn = portcullis::ids::ConnectionId::parse(CONN).unwrap();
    w.app.state.tenants.delete_connection(&tenant, &conn).await.unwrap();
    w.app.state.broker.connectors.forget(&tenant, &conn);
    w.app
        .admin_create(
            &format!("/admin/v1/tenants/{ACME}/connections"),
            json!({
                "id": CONN,
                "kind": "oidc",
                "issuer": w.idp.issuer(),
                "client_id": w.upstream.client_id,
                "client_secret": w.upstream.client_secret,
                "scopes": REFRESHING,
                "refresh_upstream": true,
            }),
        )
        .await;

    w.clock.advance(Duration::seconds(3601));
    let err = w.refresh_direct(&rt(&tokens)).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.reason),
        ("invalid_grant", "refresh.user_superseded")
    );
    assert_eq!(
        w.idp.stats().await.refresh,
        0,
        "the first connection's upstream token went to the second's token endpoint"
    );
}

/// A user the gateway disabled is refused at the refresh before the IdP is
/// asked: its upstream token goes nowhere (and an IdP that is down cannot
/// turn the refusal into a `temporarily_unavailable` that revokes nothing).
#[tokio::test]
async fn a_disabled_users_refresh_is_refused_without_asking_the_idp() {
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let mut browser = Browser::new();
    let tokens = w.tokens(&mut browser, &[], Some("alice")).await;
    let sub = jwt_claims(tokens["id_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    // The disabled flag alone (as another replica's disable writes it first):
    // the family is still there.
    let tenant = portcullis::ids::TenantId::parse(ACME).unwrap();
    w.app
        .state
        .provider
        .directory
        .set_disabled(&tenant, &sub, true, portcullis::directory::DisabledBy::Admin)
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(3601));
    let err = w.refresh_direct(&rt(&tokens)).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.reason),
        ("invalid_grant", "refresh.user_disabled")
    );
    assert_eq!(w.idp.stats().await.refresh, 0, "the IdP was asked for a disabled user");
}

/// The IdP's refresh token is not kept past the SSO session it served,
/// however the session ends: disabling the user (or deleting it) ends its
/// sessions, and their upstream sessions go with them in the same script
/// (`broker::session::end`). They used to stay, sealed, until their TTL
/// (as long as a refresh family), holding a token the IdP still honours.
#[tokio::test]
async fn a_disabled_users_upstream_refresh_token_is_forgotten_with_its_sessions() {
    use portcullis::store::Key;
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let store = &w.app.state.store;
    let kept = |tokens: &Value| {
        let sid = jwt_claims(tokens["id_token"].as_str().unwrap())["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        Key::tenant(ACME, "sso", format!("upstream:{sid}"))
    };
    let tokens = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    let sub = jwt_claims(tokens["id_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = kept(&tokens);
    assert!(store.get(&key).await.unwrap().is_some(), "kept at sign-in");

    let (status, body) = w
        .app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{ACME}/users/{sub}/disable"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "kept after the user was disabled"
    );
    let err = w.refresh_direct(&rt(&tokens)).await.unwrap_err();
    assert_eq!((err.code.as_str(), err.reason), ("invalid_grant", "refresh.unknown"));

    // Deleted: the same.
    let (status, body) = w
        .app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/tenants/{ACME}/users/{sub}/enable"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tokens = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    let key = kept(&tokens);
    assert!(store.get(&key).await.unwrap().is_some(), "kept at sign-in");
    let (status, body) = w
        .app
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/v1/tenants/{ACME}/users/{sub}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "kept after the user was deleted"
    );
}

/// An app that gives up on its refresh while the gateway asks the IdP
/// (its HTTP client timed out: the request's future is dropped) does not
/// cut the upstream refresh off: the IdP's answer, which may carry a
/// rotated token (the one sent is then spent), is still kept and the lock
/// released. It used to be dropped with the request, and the next refresh
/// sent the spent token.
#[tokio::test]
async fn an_upstream_refresh_outlives_the_app_request_that_gave_up_on_it() {
    use portcullis::store::{Key, StoreJson as _};
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let tokens = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    let provider = &w.app.state.provider;
    let family = provider.peek_refresh(&rt(&tokens)).await.unwrap().unwrap();
    let sid = family.authz.sid.clone();
    let (record, lock) = (
        Key::tenant(ACME, "sso", format!("upstream:{sid}")),
        Key::tenant(ACME, "sso", format!("upstream-lock:{sid}")),
    );
    let store = w.app.state.store.clone();
    let before: Value = store.get_json(&record).await.unwrap().unwrap();
    w.clock.advance(Duration::seconds(3601));

    // The check is dropped as soon as it holds the lock, i.e. while it
    // asks the IdP.
    let hook = provider.upstream.clone().expect("an upstream refresher");
    let check = hook.check(&family.authz);
    let locked = async {
        while store.get(&lock).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        _ = check => panic!("the check finished before it could be dropped"),
        () = locked => {}
    }

    // The IdP's answer is kept and the lock released all the same.
    let mut kept = before.clone();
    for _ in 0..100 {
        kept = store.get_json(&record).await.unwrap().unwrap();
        if kept["refreshed_at"] != before["refreshed_at"] && store.get(&lock).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        kept["refreshed_at"],
        json!(w.clock.unix()),
        "the IdP's answer was dropped"
    );
    assert!(store.get(&lock).await.unwrap().is_none(), "the lock was left behind");
    assert_eq!(w.idp.stats().await.refresh, 1);
    // And the app's next refresh is served on it, without asking again.
    let r = w.refresh(&rt(&tokens)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.idp.stats().await.refresh, 1);
}

/// An SSO session that ends while the gateway asks the IdP (the person
/// signs out, or is disabled, on another replica) does not get its
/// upstream session written back when the IdP answers: the answer is kept
/// only while the session's tombstone is absent (one script), so the IdP's
/// refresh token does not outlive the session it served, and the app's
/// refresh is refused.
#[tokio::test]
async fn an_idp_answer_for_a_session_ended_meanwhile_is_not_kept() {
    use portcullis::provider::upstream::UpstreamCheck;
    use portcullis::store::Key;
    let w = Trust::new(&[], REFRESHING, json!({ "refresh_upstream": true })).await;
    let tokens = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    let provider = &w.app.state.provider;
    let family = provider.peek_refresh(&rt(&tokens)).await.unwrap().unwrap();
    let sid = family.authz.sid.clone();
    let (record, lock) = (
        Key::tenant(ACME, "sso", format!("upstream:{sid}")),
        Key::tenant(ACME, "sso", format!("upstream-lock:{sid}")),
    );
    let store = w.app.state.store.clone();
    w.clock.advance(Duration::seconds(3601));

    let hook = provider.upstream.clone().expect("an upstream refresher");
    // The session ends once the refresh holds the lock (asks the IdP).
    let end = async {
        while store.get(&lock).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        let sso = std::collections::BTreeMap::from([(ACME.to_owned(), sid.clone())]);
        w.app.state.broker.logout(&sso, None).await.unwrap();
        assert!(store.get(&record).await.unwrap().is_none(), "forgotten at sign-out");
    };
    let (checked, ()) = tokio::join!(hook.check(&family.authz), end);
    assert_eq!(w.idp.stats().await.refresh, 1, "the IdP was asked");
    assert!(
        store.get(&record).await.unwrap().is_none(),
        "the IdP's token was written back for an ended session"
    );
    assert_eq!(checked, UpstreamCheck::Refused);
}
