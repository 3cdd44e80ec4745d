//! Connection setup (validation and discovery) and the openidconnect adapter.

use super::*;

#[tokio::test]
async fn setup_rejects_a_discovery_issuer_mismatch() {
    let key = IdpKey::generate("k1");
    let idp = FakeIdp::start(key).await;
    idp.with(|s| s.discovery_issuer = "https://evil.example".into());
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let err = oidc::setup(json!({"issuer": idp.issuer, "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.field, "issuer");
    assert!(err.message.contains("evil.example"), "{}", err.message);
}

#[tokio::test]
async fn setup_validates_fields() {
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let bad = [
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "allowed_algorithms": ["none"]}),
            "allowed_algorithms",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "allowed_algorithms": ["RS256", "HS256"]}),
            "allowed_algorithms",
        ),
        (json!({"issuer": idp.issuer, "client_id": ""}), "client_id"),
        (json!({"issuer": "not a url", "client_id": CLIENT_ID}), "issuer"),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "claim_mapping": {"email": ""}}),
            "claim_mapping.email",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "surprise": 1}),
            "body",
        ),
        (
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "claim_mapping": {"mail": "x"}}),
            "body",
        ),
    ];
    for (body, field) in bad {
        let err = oidc::setup(body.clone(), &ctx).await.unwrap_err();
        assert_eq!(err.field, field, "{body}: {err}");
    }
    // The stored shape, with defaults filled in.
    let cfg = oidc::setup(
        json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": "x"}),
        &ctx,
    )
    .await
    .unwrap();
    let stored = serde_json::to_value(&cfg).unwrap();
    assert_eq!(
        stored,
        json!({
            "issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": "x", "scopes": [],
            "claim_mapping": {"subject": "sub", "email": "email", "email_verified": "email_verified",
                "name": "name", "given_name": "given_name", "family_name": "family_name", "groups": "groups"},
            "allowed_algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"],
            "userinfo": true,
        })
    );
    assert_eq!(cfg.client_secret, Some(Secret::new("x")));
}

#[tokio::test]
async fn setup_refuses_loopback_issuers_when_private_networks_are_off() {
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, false);
    let https_issuer = idp.issuer.replace("http://", "https://");
    let err = oidc::setup(json!({"issuer": https_issuer, "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.field, "issuer");
    assert!(err.message.contains("outbound.forbidden_address"), "{}", err.message);
    // Plain http is refused outright in that mode.
    let err = oidc::setup(json!({"issuer": idp.issuer, "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.field, "issuer");
}

#[tokio::test]
async fn openidconnect_crate_uses_the_guarded_client() {
    use openidconnect::core::CoreProviderMetadata;
    use openidconnect::IssuerUrl;
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let open = context(&clock, true);
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(idp.issuer.clone()).unwrap(), &open.http)
        .await
        .unwrap();
    assert_eq!(meta.issuer().as_str(), idp.issuer);
    // With private networks off, the same call is refused by the guard.
    let closed = context(&clock, false);
    let err = CoreProviderMetadata::discover_async(IssuerUrl::new(idp.issuer.clone()).unwrap(), &closed.http)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("outbound.forbidden_address"), "{err:?}");
}
