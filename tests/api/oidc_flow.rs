//! End-to-end OpenID Connect flows with real peers: an oidc-provider
//! upstream IdP ← the gateway (over a real Redis) → openid-client apps,
//! driven by the scripted browser. openid-client validates every ID token
//! (JWKS signature, iss, aud, nonce, exp, auth_time against max_age).

use serde_json::{json, Value};

use crate::support::browser::Browser;
use crate::support::oidc_world::{s, ClientAuth, OidcWorld, ACME, CONN, GLOBEX};

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
