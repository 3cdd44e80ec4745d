//! A connection re-pointed at another IdP: identity links name the
//! connection, not the issuer, so a change of the OIDC `issuer` (or the
//! SAML entity id) starts the connection's users afresh unless the admin
//! keeps them (`keep_users=true`). Otherwise the new IdP's `alice` would
//! sign in as the old IdP's `alice`, with her `sub`, profile and grants.
//! Against two real `oidc-provider` peers that both have an account
//! `alice`, and real Redis.

use portcullis::provider::grants::{ClientCredentials, TokenRequest};
use reqwest::Method;
use serde_json::{json, Value};

use crate::oidc_trust::{jwt_claims, Trust};
use crate::revocation::access_reason;
use crate::support::browser::Browser;
use crate::support::oidc_world::{ACME, CONN};
use crate::support::peers::UpstreamIdp;

/// The upstream scopes: no upstream refresh token is kept, so the app's
/// refresh asks only the gateway (an upstream session kept from the old
/// IdP ends anyway once the issuer changes: `oidc_trust`).
const SCOPES: &[&str] = &["openid", "email", "profile"];

fn connection_path() -> String {
    format!("/admin/v1/tenants/{ACME}/connections/{CONN}")
}

/// The provider's reason for refusing the raw client's refresh token.
async fn refresh_reason(w: &Trust, refresh_token: &str) -> &'static str {
    let creds = ClientCredentials::Secret {
        id: w.client.reg.client_id.clone(),
        secret: w.client.secret().to_owned(),
    };
    let client = w.app.state.provider.authenticate_client(&creds).await.unwrap();
    let req = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: Some(refresh_token.into()),
        ..TokenRequest::default()
    };
    w.app.state.provider.token(&client, &req).await.unwrap_err().reason
}

fn sub(tokens: &Value) -> String {
    jwt_claims(tokens["id_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The tenant's audit events of `action`.
async fn events(w: &Trust, action: &str) -> Vec<Value> {
    let (status, log) = w
        .app
        .admin(Method::GET, &format!("/admin/v1/tenants/{ACME}/audit"), None)
        .await;
    assert_eq!(status, 200, "{log}");
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

/// Points the connection at `idp` (the same client registration), with
/// `query` on the PATCH.
async fn re_point(w: &Trust, idp: &UpstreamIdp, query: &str) -> (u16, Value) {
    let (status, answer) = w
        .app
        .admin(
            Method::PATCH,
            &format!("{}{query}", connection_path()),
            Some(json!({"issuer": idp.issuer(), "client_secret": w.upstream.client_secret})),
        )
        .await;
    (status.as_u16(), answer)
}

#[tokio::test]
async fn a_connection_re_pointed_at_another_idp_never_signs_its_users_in_as_the_old_idps() {
    let mut w = Trust::new(&[], SCOPES, json!({})).await;
    let mut browser = Browser::new();
    let before = w.tokens(&mut browser, &[], Some("alice")).await;
    let (old_sub, old_refresh, old_access) = (
        sub(&before),
        before["refresh_token"].as_str().unwrap().to_owned(),
        before["access_token"].as_str().unwrap().to_owned(),
    );

    // A change that keeps the issuer keeps the users.
    let (status, answer) = w
        .app
        .admin(
            Method::PATCH,
            &connection_path(),
            Some(json!({"scopes": ["openid", "email"]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("users_renewed").is_none(), "{answer}");
    let again = w.refresh(&old_refresh).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let old_refresh = again.body["refresh_token"].as_str().unwrap().to_owned();

    // Another IdP, whose `alice` is another person with the same subject.
    let other = UpstreamIdp::spawn(std::slice::from_ref(&w.upstream)).await;
    let (status, answer) = re_point(&w, &other, "").await;
    assert_eq!(status, 200, "{answer}");
    let old_idp = std::mem::replace(&mut w.idp, other);

    // The new IdP's alice is a new user.
    let after = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    assert_ne!(sub(&after), old_sub, "the new IdP's alice took the old alice's sub");
    // And what the old alice holds ends with the old IdP.
    assert_eq!(refresh_reason(&w, &old_refresh).await, "refresh.user_superseded");
    assert_eq!(access_reason(&w.app, &old_access).await, "token.user_superseded");
    // Her browser's SSO session is not reused: the new IdP is asked.
    let logins = w.idp.stats().await.logins;
    let reused = w.tokens(&mut browser, &[], Some("alice")).await;
    assert_eq!(w.idp.stats().await.logins, logins + 1, "the old SSO session was reused");
    assert_eq!(sub(&reused), sub(&after));

    // The admin is told, and the audit log keeps both issuers.
    assert_eq!(answer["users_renewed"], true, "{answer}");
    let renewed = events(&w, "connection.users_renewed").await;
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert_eq!(renewed[0]["before"]["issuer"], old_idp.issuer(), "{renewed:?}");
    assert_eq!(renewed[0]["after"]["issuer"], w.idp.issuer(), "{renewed:?}");
}

#[tokio::test]
async fn an_admin_moving_a_tenant_between_idps_that_share_subjects_keeps_its_users_on_its_word() {
    let mut w = Trust::new(&[], SCOPES, json!({})).await;
    let before = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    let old_refresh = before["refresh_token"].as_str().unwrap().to_owned();
    let other = UpstreamIdp::spawn(std::slice::from_ref(&w.upstream)).await;

    // Neither true nor false: refused, and nothing changes.
    let (status, answer) = re_point(&w, &other, "?keep_users=yes").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "keep_users", "{answer}");
    let (_, stored) = w.app.admin(Method::GET, &connection_path(), None).await;
    assert_eq!(stored["issuer"], w.idp.issuer(), "{stored}");

    let (status, answer) = re_point(&w, &other, "?keep_users=true").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("users_renewed").is_none(), "{answer}");
    assert!(events(&w, "connection.users_renewed").await.is_empty());
    let _old_idp = std::mem::replace(&mut w.idp, other);
    let after = w.tokens(&mut Browser::new(), &[], Some("alice")).await;
    assert_eq!(sub(&after), sub(&before), "kept users keep their sub");
    let again = w.refresh(&old_refresh).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
}
