//! End-to-end OpenID Connect flows with real peers: an oidc-provider
//! upstream IdP ← the gateway (over a real Redis) → openid-client apps,
//! driven by the scripted browser. openid-client validates every ID token
//! (JWKS signature, iss, aud, nonce, exp, auth_time against max_age).

use serde_json::{json, Value};

use crate::support::browser::{Browser, Nav};
use crate::support::oidc_world::{s, ClientAuth, OidcWorld, Pkce, ACME, APP_SCOPE, CONN, GLOBEX, UPSTREAM_SCOPES};
use crate::support::peers::IDP_PASSWORD;

#[tokio::test]
async fn sign_in_yields_tenant_claims_and_a_stable_sub() {
    let w = OidcWorld::new().await;
    let first = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let c = &first["id_token_claims"];
    assert_eq!(s(c, "iss"), w.issuer());
    assert_eq!(c["aud"], json!("app-one"));
    assert_eq!(s(c, "tenant"), ACME);
    assert_eq!(s(c, "connection"), CONN);
    assert_eq!(s(c, "email"), "alice@acme.test");
    assert_eq!(c["email_verified"], json!(true));
    assert_eq!(s(c, "name"), "Alice Liddell");
    assert_eq!(s(c, "given_name"), "Alice");
    assert_eq!(s(c, "family_name"), "Liddell");
    assert_eq!(c["groups"], json!(["engineering", "admins"]));
    assert!(c["auth_time"].is_u64(), "auth_time in {c}");
    assert!(c["sid"].is_string(), "sid in {c}");
    assert!(c["amr"].is_array(), "amr in {c}");

    // The access token is a signed JWT for this client and tenant.
    let (header, at) = w.verify_access_token(s(&first, "access_token")).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(s(&at, "client_id"), "app-one");
    assert_eq!(s(&at, "tenant"), ACME);
    assert_eq!(s(&at, "sub"), s(c, "sub"));
    assert!(s(&at, "scope").split(' ').any(|x| x == "openid"));

    // A second, independent sign-in (new browser, new IdP login): same sub.
    let second = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    assert_eq!(second["id_token_claims"]["sub"], c["sub"]);
    // Another user of the same tenant gets another sub.
    let bob = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("bob"))
        .await;
    assert_ne!(bob["id_token_claims"]["sub"], c["sub"]);
}

#[tokio::test]
async fn login_hint_domain_selects_the_tenant() {
    let w = OidcWorld::new().await;
    let out = w
        .sign_in(
            &mut Browser::new(),
            &w.app1,
            &[("login_hint", "carol@globex.test")],
            Some("carol"),
        )
        .await;
    assert_eq!(s(&out["id_token_claims"], "tenant"), GLOBEX);
    assert_eq!(s(&out["id_token_claims"], "email"), "carol@globex.test");
}

#[tokio::test]
async fn second_app_of_the_same_tenant_signs_in_by_sso_without_the_idp() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let one = w
        .sign_in(&mut browser, &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let before = w.idp.stats().await;

    browser.clear_history();
    let two = w.sign_in(&mut browser, &w.app2, &[("tenant", ACME)], None).await;
    assert!(
        !browser.visited_origin(&w.idp.peer.url),
        "SSO went to the IdP:\n{}",
        browser.trail()
    );
    assert_eq!(w.idp.stats().await, before, "the IdP saw no request");
    let (c1, c2) = (&one["id_token_claims"], &two["id_token_claims"]);
    assert_eq!(c2["aud"], json!("app-two"));
    assert_eq!(c2["sub"], c1["sub"]);
    assert_eq!(c2["sid"], c1["sid"]);
    assert_eq!(c2["tenant"], c1["tenant"]);
    assert_eq!(c2["auth_time"], c1["auth_time"], "no new authentication");
}

#[tokio::test]
async fn prompt_login_forces_reauthentication_at_the_idp() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    w.sign_in(&mut browser, &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let logins = w.idp.stats().await.logins;

    browser.clear_history();
    let again = w
        .sign_in(
            &mut browser,
            &w.app2,
            &[("tenant", ACME), ("prompt", "login")],
            Some("alice"),
        )
        .await;
    assert!(browser.visited_origin(&w.idp.peer.url), "{}", browser.trail());
    assert_eq!(w.idp.stats().await.logins, logins + 1);
    assert_eq!(s(&again["id_token_claims"], "tenant"), ACME);
}

#[tokio::test]
async fn max_age_zero_forces_reauthentication_at_the_idp() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    w.sign_in(&mut browser, &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let logins = w.idp.stats().await.logins;

    browser.clear_history();
    // openid-client checks auth_time against max_age on the ID token.
    w.sign_in(
        &mut browser,
        &w.app2,
        &[("tenant", ACME), ("max_age", "0")],
        Some("alice"),
    )
    .await;
    assert_eq!(w.idp.stats().await.logins, logins + 1);
}

#[tokio::test]
async fn max_age_longer_than_the_session_age_keeps_sso() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let one = w
        .sign_in(&mut browser, &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let before = w.idp.stats().await;
    browser.clear_history();
    let two = w
        .sign_in(&mut browser, &w.app2, &[("tenant", ACME), ("max_age", "3600")], None)
        .await;
    assert!(!browser.visited_origin(&w.idp.peer.url), "{}", browser.trail());
    assert_eq!(w.idp.stats().await, before);
    // OIDC Core §3.1.2.1: with max_age the ID token carries auth_time.
    assert_eq!(two["id_token_claims"]["auth_time"], one["id_token_claims"]["auth_time"]);
}

#[tokio::test]
async fn session_of_one_tenant_does_not_sign_in_to_another() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let a = w
        .sign_in(&mut browser, &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let before = w.idp.stats().await;

    // Same browser, tenant B: the gateway must go upstream (through tenant
    // B's connection). The IdP still has alice's session, so it answers
    // without a password form.
    browser.clear_history();
    let b = w.sign_in(&mut browser, &w.app1, &[("tenant", GLOBEX)], None).await;
    assert!(browser.visited_origin(&w.idp.peer.url), "{}", browser.trail());
    assert_eq!(w.idp.stats().await.authorize, before.authorize + 1);
    let (ca, cb) = (&a["id_token_claims"], &b["id_token_claims"]);
    assert_eq!(s(cb, "tenant"), GLOBEX);
    assert_eq!(s(cb, "email"), "alice@acme.test", "same upstream user");
    assert_ne!(cb["sub"], ca["sub"], "sub is per tenant");
    assert_ne!(cb["sid"], ca["sid"]);
}

#[tokio::test]
async fn tokens_and_codes_of_one_client_are_useless_to_another() {
    let w = OidcWorld::new().await;
    let a = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    // app-two presents app-one's refresh token.
    let stolen = w.app2.refresh(s(&a, "refresh_token")).await;
    assert_eq!(stolen.error(), Some("invalid_grant"), "{:?}", stolen.body);
    // ...and the attempt did not burn it: its owner can still use it.
    let owner = w.app1.refresh(s(&a, "refresh_token")).await;
    assert_eq!(owner.status, 200, "{:?}", owner.body);

    // A code issued to raw-a, redeemed by raw-b (with either redirect URI).
    let pkce = crate::support::oidc_world::Pkce::new();
    let code = w.raw_code(&w.raw_a, &pkce).await;
    for redirect in [&w.raw_b.redirect_uri, &w.raw_a.redirect_uri] {
        let r = w
            .oauth_post(
                "token_endpoint",
                ClientAuth::Basic(&w.raw_b.reg.client_id, w.raw_b.secret()),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect.as_str()),
                    ("code_verifier", &pkce.verifier),
                ],
            )
            .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert_eq!(r.error(), Some("invalid_grant"));
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let w = OidcWorld::new().await;
    let first = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let rt1 = s(&first, "refresh_token").to_owned();

    let second = w.app1.refresh(&rt1).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let rt2 = s(&second.body, "refresh_token").to_owned();
    assert_ne!(rt2, rt1, "refresh token rotates");
    assert_ne!(s(&second.body, "access_token"), s(&first, "access_token"));
    if let Some(claims) = second.body.get("id_token_claims").filter(|c| !c.is_null()) {
        assert_eq!(claims["sub"], first["id_token_claims"]["sub"]);
    }

    // Replaying the rotated-out token is refused and kills the family.
    let replay = w.app1.refresh(&rt1).await;
    assert_eq!(replay.error(), Some("invalid_grant"), "{:?}", replay.body);
    let newest = w.app1.refresh(&rt2).await;
    assert_eq!(newest.error(), Some("invalid_grant"), "{:?}", newest.body);
}

#[tokio::test]
async fn userinfo_answers_for_the_access_token_only() {
    let w = OidcWorld::new().await;
    let out = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let sub = s(&out["id_token_claims"], "sub");
    let info = w.app1.userinfo(s(&out, "access_token"), Some(sub)).await;
    assert_eq!(info.status, 200, "{:?}", info.body);
    assert_eq!(s(&info.body, "sub"), sub);
    assert_eq!(s(&info.body, "email"), "alice@acme.test");

    let userinfo = w.endpoint("userinfo_endpoint");
    let none = w.app.client.get(userinfo.clone()).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    let forged = w
        .app
        .client
        .get(userinfo)
        .bearer_auth(format!("{}x", s(&out, "access_token")))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let challenge = forged.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
}

#[tokio::test]
async fn revoked_refresh_token_is_inactive_and_unusable() {
    let w = OidcWorld::new().await;
    let out = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let (at, rt) = (s(&out, "access_token"), s(&out, "refresh_token"));

    let live: Value = w.app1.introspect(at).await.body;
    assert_eq!(live["active"], json!(true), "{live}");
    assert_eq!(s(&live, "client_id"), "app-one");
    assert_eq!(live["sub"], out["id_token_claims"]["sub"]);
    assert_eq!(w.app1.introspect(rt).await.body["active"], json!(true));

    let revoked = w.app1.revoke(rt, Some("refresh_token")).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(w.app1.introspect(rt).await.body, json!({ "active": false }));
    assert_eq!(w.app1.refresh(rt).await.error(), Some("invalid_grant"));

    // RFC 7009 §2.2: an unknown token is answered 200 too.
    assert_eq!(w.app1.revoke("no-such-token", None).await.status, 200);
    // RFC 7662 §2.1: introspection requires client authentication.
    let anonymous = w
        .app
        .client
        .post(w.endpoint("introspection_endpoint"))
        .form(&[("token", at)])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn revoked_access_token_is_inactive_and_refused_by_userinfo() {
    let w = OidcWorld::new().await;
    let out = w
        .sign_in(&mut Browser::new(), &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;
    let at = s(&out, "access_token");
    let revoked = w.app1.revoke(at, Some("access_token")).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(w.app1.introspect(at).await.body, json!({ "active": false }));
    let userinfo = w
        .app
        .client
        .get(w.endpoint("userinfo_endpoint"))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401);
}

#[tokio::test]
async fn end_session_clears_the_sso_session() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let out = w
        .sign_in(&mut browser, &w.app1, &[("tenant", ACME)], Some("alice"))
        .await;

    let page = browser
        .get(&w.app1.logout_url(&[("id_token_hint", s(&out, "id_token"))]))
        .await;
    assert!(page.status.is_success(), "logout: {} {}", page.status, page.body);
    // A confirmation form on the gateway (CSRF-safe logout) is submitted.
    if let Some(form) = page.forms().into_iter().find(|f| {
        page.url
            .join(&f.action)
            .is_ok_and(|u| u.origin() == w.app.base.origin())
    }) {
        let done = browser.submit(&page, &form).await;
        assert!(done.status.is_success(), "logout confirm: {}", done.status);
    }
    // The session's refresh families end, and the access tokens minted
    // with them (`token.family_revoked`).
    for token in ["refresh_token", "access_token"] {
        assert_eq!(
            w.app1.introspect(s(&out, token)).await.body,
            json!({"active": false}),
            "{token}"
        );
    }
    let reason = w.app.state.provider.check_access_token(s(&out, "access_token")).await;
    assert_eq!(reason.unwrap_err().reason, "token.family_revoked");

    let before = w.idp.stats().await.authorize;
    browser.clear_history();
    let again = w.sign_in(&mut browser, &w.app2, &[("tenant", ACME)], None).await;
    assert!(
        browser.visited_origin(&w.idp.peer.url),
        "signed in without going upstream after logout:\n{}",
        browser.trail()
    );
    assert_eq!(w.idp.stats().await.authorize, before + 1);
    assert_ne!(again["id_token_claims"]["sid"], out["id_token_claims"]["sid"]);
}

/// A real openid-client app asks for API scopes: it gets only those its API
/// defines and it is allowed, an access token whose `aud` is the API, only
/// the claims its OIDC scopes ask for (ID token and userinfo), and no refresh
/// token without `offline_access`. A `resource` it may not use comes back as
/// `invalid_target`.
#[tokio::test]
async fn an_app_gets_an_access_token_for_its_api_with_the_scopes_and_claims_it_may_have() {
    use crate::support::peers::RelyingParty;
    use reqwest::{Method, StatusCode};
    const ORDERS: &str = "https://orders.example.test";
    const STOCK: &str = "https://stock.example.test";

    let w = OidcWorld::new().await;
    for (id, scope) in [(ORDERS, "orders:read"), (STOCK, "stock:read")] {
        let (status, body) = w
            .app
            .admin(
                Method::POST,
                "/admin/v1/resource-servers",
                Some(json!({"identifier": id, "name": id, "scopes": [{"name": scope}, {"name": format!("{scope}-all")}]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let rp = RelyingParty::spawn("orders-app", &w.app.base).await;
    let (status, reg) = w
        .app
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({
                "client_id": "orders-app",
                "redirect_uris": [rp.redirect_uri().as_str()],
                "allowed_scopes": ["orders:read"],
                "default_resource": ORDERS,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    rp.configure(
        "orders-app",
        s(&reg, "client_secret"),
        "basic",
        "openid email orders:read orders:read-all stock:read",
    )
    .await;

    let out = w
        .sign_in(&mut Browser::new(), &rp, &[("tenant", ACME)], Some("alice"))
        .await;
    assert_eq!(s(&out, "scope"), "openid email orders:read");
    assert!(
        out["refresh_token"].is_null(),
        "no offline_access, no refresh token: {out}"
    );
    let c = &out["id_token_claims"];
    assert_eq!(c["aud"], json!("orders-app"));
    assert_eq!(s(c, "email"), "alice@acme.test");
    for absent in ["name", "given_name", "family_name", "groups"] {
        assert!(c.get(absent).is_none(), "{absent} without its scope: {c}");
    }
    let (_, at) = w.verify_access_token(s(&out, "access_token")).await;
    assert_eq!(at["aud"], json!(ORDERS));
    assert_eq!(s(&at, "scope"), "openid email orders:read");
    let info = rp.userinfo(s(&out, "access_token"), Some(s(c, "sub"))).await;
    assert_eq!(info.status, 200, "{:?}", info.body);
    assert_eq!(s(&info.body, "email"), "alice@acme.test");
    assert!(
        info.body.get("name").is_none() && info.body.get("groups").is_none(),
        "{:?}",
        info.body
    );

    // Another API it has no scope at: refused at the authorization endpoint (SSO: no IdP login).
    let mut browser = Browser::new();
    w.sign_in(&mut browser, &rp, &[("tenant", ACME)], Some("alice")).await;
    let page = browser
        .get(&rp.login_url(&[("tenant", ACME), ("resource", STOCK)]))
        .await;
    assert!(rp.is_callback(&page.url), "{}", browser.trail());
    let body = page.json();
    assert_eq!(s(&body, "error"), "invalid_target", "{body}");
    assert_eq!(s(&body, "from"), "authorization_response");
}

/// Starts acme's sign-in at its connection `corp-idp` for the raw client
/// `raw-a` in `browser` and stops where the gateway sends it to the IdP:
/// the IdP's authorization URL (its `state` is the pending login's id) and
/// the PKCE pair.
async fn to_the_idp(w: &OidcWorld, browser: &mut Browser) -> (url::Url, Pkce) {
    let pkce = Pkce::new();
    let mut url = w.endpoint("authorization_endpoint");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &w.raw_a.reg.client_id)
        .append_pair("redirect_uri", w.raw_a.redirect_uri.as_str())
        .append_pair("scope", APP_SCOPE)
        .append_pair("tenant", ACME)
        .append_pair("connection", CONN)
        .append_pair("state", "app-state")
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    let at_idp = browser.get_until(&url, &|u: &url::Url| w.idp.serves(u)).await.stopped();
    (at_idp, pkce)
}

/// The pending login's id, the `state` the gateway sent to the IdP.
fn login_state(at_idp: &url::Url) -> String {
    at_idp
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no state in {at_idp}"))
}

/// Goes on at the IdP from `at_idp` (alice logs in) and stops at the
/// gateway's callback, answered but not followed: its URL.
async fn to_the_callback(w: &OidcWorld, browser: &mut Browser, at_idp: &url::Url) -> url::Url {
    let callback = w.app.oidc_callback(ACME, CONN);
    let is_callback = move |u: &url::Url| u.path() == callback.path();
    let page = match browser.get_until(at_idp, &is_callback).await {
        Nav::Page(page) => page,
        Nav::Stopped(url) => return url,
    };
    let mut form = page.form(Some("login"));
    form.set("username", "alice");
    form.set("password", IDP_PASSWORD);
    browser.submit_until(&page, &form, &is_callback).await.stopped()
}

/// Follows `url` in `browser` until the gateway answers with a page or
/// sends the browser back to `raw-a` (never served): the page, or the URL.
async fn answer_in(w: &OidcWorld, browser: &mut Browser, url: &url::Url) -> Nav {
    let prefix = w.raw_a.redirect_uri.as_str().to_owned();
    browser
        .get_until(url, &move |u: &url::Url| u.as_str().starts_with(&prefix))
        .await
}

/// The page of a refusal with `reason`.
fn refused_with(nav: Nav, reason: &str) {
    match nav {
        Nav::Page(page) => {
            assert_eq!(page.status, 400, "{}", page.body);
            assert!(page.body.contains(&format!("<code>{reason}</code>")), "{}", page.body);
        }
        Nav::Stopped(url) => panic!("sent back to the app, not refused with {reason}: {url}"),
    }
}

/// The reasons of acme's `signin.failed` audit events.
async fn failed_reasons(w: &OidcWorld) -> Vec<String> {
    w.app
        .tenant_audit(ACME, "signin.failed")
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

/// A pending login is single use, like an OAuth `state`: an IdP's
/// `error=access_denied` answer naming it, from the browser that started
/// it, ends it (refused for its reason, `oidc.idp_error`, and sent back to
/// the app as `access_denied`); the same answer again, and the IdP's real
/// answer after it, get `callback.unknown_login`, and the app no code.
#[tokio::test]
async fn an_error_answer_uses_up_its_pending_login() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let (at_idp, _) = to_the_idp(&w, &mut browser).await;
    let mut denied = w.app.oidc_callback(ACME, CONN);
    denied
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("state", &login_state(&at_idp))
        .append_pair("iss", &w.idp.issuer());
    let back = answer_in(&w, &mut browser, &denied).await.stopped();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"), "{back}");
    assert_eq!(q.get("code"), None, "{back}");
    assert_eq!(failed_reasons(&w).await, ["oidc.idp_error"]);

    refused_with(answer_in(&w, &mut browser, &denied).await, "callback.unknown_login");
    let real = to_the_callback(&w, &mut browser, &at_idp).await;
    refused_with(answer_in(&w, &mut browser, &real).await, "callback.unknown_login");
}

/// Likewise an answer whose code the IdP does not know (its exchange
/// fails): it ends the pending login it names, and the IdP's real answer
/// after it gets `callback.unknown_login`.
#[tokio::test]
async fn an_answer_with_a_bad_code_uses_up_its_pending_login() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let (at_idp, _) = to_the_idp(&w, &mut browser).await;
    let real = to_the_callback(&w, &mut browser, &at_idp).await;
    // The IdP's answer with its code made up (state and iss as sent).
    let mut forged = real.clone();
    let pairs: Vec<(String, String)> = real.query_pairs().into_owned().collect();
    forged.query_pairs_mut().clear().extend_pairs(
        pairs
            .iter()
            .map(|(k, v)| (k.as_str(), if k == "code" { "made-up" } else { v.as_str() })),
    );
    assert_ne!(forged, real);
    let back = answer_in(&w, &mut browser, &forged).await.stopped();
    assert!(
        back.query_pairs().all(|(k, _)| k != "code"),
        "a code for the app: {back}"
    );
    assert_eq!(failed_reasons(&w).await, ["oidc.token_rejected"]);
    refused_with(answer_in(&w, &mut browser, &forged).await, "callback.unknown_login");
    refused_with(answer_in(&w, &mut browser, &real).await, "callback.unknown_login");
}

/// An answer from a browser that does not hold the binding of the pending
/// login it names is refused (`callback.browser_mismatch`), as often as it
/// is sent, and leaves the login alone: the browser that started it still
/// finishes with the IdP's answer, and the app gets its code.
#[tokio::test]
async fn an_answer_from_another_browser_leaves_the_login_to_the_browser_that_started_it() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let (at_idp, pkce) = to_the_idp(&w, &mut browser).await;
    let real = to_the_callback(&w, &mut browser, &at_idp).await;
    let mut denied = w.app.oidc_callback(ACME, CONN);
    denied
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("state", &login_state(&at_idp));
    for answer in [&denied, &real, &denied] {
        let mut other = Browser::new();
        refused_with(answer_in(&w, &mut other, answer).await, "callback.browser_mismatch");
    }
    // Anyone can send them again: audited once a minute.
    assert_eq!(failed_reasons(&w).await, ["callback.browser_mismatch"]);
    let back = answer_in(&w, &mut browser, &real).await.stopped();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("app-state"), "{back}");
    let code = q.get("code").unwrap_or_else(|| panic!("no code in {back}"));
    let tokens = w.redeem(&w.raw_a, code, Some(&pkce.verifier)).await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.body);
}

/// `real`, the IdP's answer at acme's callback, delivered to the callback
/// of `tenant`'s connection `connection` instead (same query).
fn delivered_to(w: &OidcWorld, real: &url::Url, tenant: &str, connection: &str) -> url::Url {
    let mut elsewhere = w.app.oidc_callback(tenant, connection);
    elsewhere.set_query(real.query());
    elsewhere
}

/// The mix-up attack (RFC 9207) and its cousin across tenants: the IdP's
/// answer to a login begun at one connection, delivered to the callback of
/// another, is refused before any code is redeemed, so a code goes only to
/// the token endpoint of the connection its login began at. At another
/// tenant's connection to the same issuer the answer names no login of
/// that tenant (`callback.unknown_login`) and leaves the login alone: its
/// own callback still finishes. At another connection of the same tenant
/// (the same issuer too, so `iss` cannot tell them apart) it names a login
/// of another connection (`callback.login_mismatch`), which it ends.
#[tokio::test]
async fn an_idp_answer_delivered_to_another_connections_callback_never_has_its_code_redeemed() {
    let w = OidcWorld::new().await;
    w.app
        .create_oidc_connection(
            ACME,
            "partner-idp",
            &w.idp.issuer(),
            "portcullis-acme",
            "partner-secret",
            UPSTREAM_SCOPES,
        )
        .await;

    // Another tenant's callback.
    let mut browser = Browser::new();
    let (at_idp, pkce) = to_the_idp(&w, &mut browser).await;
    let real = to_the_callback(&w, &mut browser, &at_idp).await;
    let before = w.idp.stats().await;
    let elsewhere = delivered_to(&w, &real, GLOBEX, CONN);
    refused_with(answer_in(&w, &mut browser, &elsewhere).await, "callback.unknown_login");
    assert_eq!(w.idp.stats().await.token, before.token, "a code was redeemed");
    let back = answer_in(&w, &mut browser, &real).await.stopped();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    let code = q.get("code").unwrap_or_else(|| panic!("no code in {back}"));
    let tokens = w.redeem(&w.raw_a, code, Some(&pkce.verifier)).await;
    assert_eq!(tokens.status, 200, "{:?}", tokens.body);

    // Another connection of the same tenant.
    let mut browser = Browser::new();
    let (at_idp, _) = to_the_idp(&w, &mut browser).await;
    let real = to_the_callback(&w, &mut browser, &at_idp).await;
    let before = w.idp.stats().await;
    let elsewhere = delivered_to(&w, &real, ACME, "partner-idp");
    refused_with(answer_in(&w, &mut browser, &elsewhere).await, "callback.login_mismatch");
    assert_eq!(w.idp.stats().await.token, before.token, "a code was redeemed");
    assert_eq!(failed_reasons(&w).await, ["callback.login_mismatch"]);
    refused_with(answer_in(&w, &mut browser, &real).await, "callback.unknown_login");
    assert_eq!(w.idp.stats().await.token, before.token, "a code was redeemed");
}

/// A login begun at a connection that is then deleted and created again
/// under the same id (to the same issuer here) belongs to the old
/// connection: the IdP's answer to it is refused
/// (`callback.login_superseded`) before the new connection's connector
/// sees it, so its code is never sent to the new connection's token
/// endpoint with the new connection's credentials.
#[tokio::test]
async fn an_answer_to_a_login_of_a_connection_created_again_is_refused_before_its_code_is_redeemed() {
    let w = OidcWorld::new().await;
    let mut browser = Browser::new();
    let (at_idp, _) = to_the_idp(&w, &mut browser).await;
    let real = to_the_callback(&w, &mut browser, &at_idp).await;
    let path = format!("/admin/v1/tenants/{ACME}/connections/{CONN}");
    let (status, body) = w.app.admin(reqwest::Method::DELETE, &path, None).await;
    assert!(status.is_success(), "{status}: {body}");
    w.app
        .create_oidc_connection(
            ACME,
            CONN,
            &w.idp.issuer(),
            "portcullis-acme",
            "another-secret",
            UPSTREAM_SCOPES,
        )
        .await;
    let before = w.idp.stats().await;
    refused_with(answer_in(&w, &mut browser, &real).await, "callback.login_superseded");
    assert_eq!(w.idp.stats().await.token, before.token, "a code was redeemed");
}
