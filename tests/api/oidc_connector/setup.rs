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
            json!({"issuer": idp.issuer, "client_id": CLIENT_ID, "refresh_interval_secs": 5}),
            "refresh_interval_secs",
        ),
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
            "userinfo": true, "refresh_upstream": false, "refresh_interval_secs": null,
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

/// With private networks allowed, plain http is still only for loopback
/// and private hosts: a public issuer over http is refused before any fetch
/// (its discovery document, in clear text, would name the keys).
#[tokio::test]
async fn an_http_issuer_on_a_public_host_is_refused_even_with_private_networks_allowed() {
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    for issuer in [
        "http://idp.example.com",
        "http://93.184.215.14/realms/a",
        "ftp://idp.example.com",
    ] {
        let err = oidc::setup(json!({"issuer": issuer, "client_id": CLIENT_ID}), &ctx)
            .await
            .unwrap_err();
        assert_eq!(err.field, "issuer", "{issuer}");
        assert!(
            err.message.contains("must be an https URL"),
            "{issuer}: {}",
            err.message
        );
    }
    // Discovery itself refuses it too (a connection stored before the rule).
    let err = oidc::provider::discover(&ctx, "http://idp.example.com")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, "oidc.bad_endpoint_url");
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

#[tokio::test]
async fn discovery_endpoints_must_be_https_or_private_http() {
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let bad = [
        ("authorization_endpoint", "javascript:alert(document.cookie)"),
        ("authorization_endpoint", "data:text/html,<script>alert(1)</script>"),
        ("token_endpoint", "file:///etc/passwd"),
        ("userinfo_endpoint", "ftp://127.0.0.1/userinfo"),
        ("jwks_uri", "gopher://127.0.0.1/jwks"),
        ("end_session_endpoint", "javascript:alert(1)"),
        // Plain http to a public host, even with private networks allowed.
        ("authorization_endpoint", "http://idp.example.com/authorize"),
    ];
    for (field, value) in bad {
        let idp = FakeIdp::start(IdpKey::generate("k1")).await;
        idp.with(|s| s.endpoint_override.insert(field.into(), value.into()));
        let err = oidc::setup(json!({"issuer": idp.issuer, "client_id": CLIENT_ID}), &ctx)
            .await
            .unwrap_err();
        assert_eq!(err.field, "issuer", "{field}={value}");
        assert!(
            err.message.contains("oidc.bad_endpoint_url"),
            "{field}={value}: {}",
            err.message
        );
    }
    // https anywhere, and http to loopback when private networks are allowed, pass.
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    idp.with(|s| {
        s.endpoint_override
            .insert("end_session_endpoint".into(), "https://idp.example.com/logout".into())
    });
    oidc::setup(json!({"issuer": idp.issuer, "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bad_endpoint_at_refetched_discovery_is_refused_at_login() {
    let f = Fixture::new().await;
    // The IdP's document changes after setup; the connector reads it afresh.
    f.idp.with(|s| {
        s.endpoint_override
            .insert("authorization_endpoint".into(), "javascript:alert(1)".into())
    });
    let connector = OidcConnector::new(
        &f.connection,
        match &f.connection.kind {
            ConnectionKind::Oidc(cfg) => cfg.clone(),
            _ => unreachable!(),
        },
        f.ctx.clone(),
    )
    .unwrap();
    let err = connector
        .begin(BeginRequest {
            login_id: "l-9",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "oidc.bad_endpoint_url");
}

#[test]
fn endpoint_rule() {
    use portcullis::upstream::oidc::provider::endpoint_allowed;
    let ok = |u: &str, private: bool| endpoint_allowed(&Url::parse(u).unwrap(), private);
    assert!(ok("https://idp.example.com/a", false));
    assert!(!ok("http://idp.example.com/a", false));
    assert!(!ok("http://idp.example.com/a", true));
    assert!(!ok("http://127.0.0.1:8080/a", false));
    assert!(ok("http://127.0.0.1:8080/a", true));
    assert!(ok("http://10.1.2.3/a", true));
    assert!(ok("http://localhost:3000/a", true));
    assert!(!ok("javascript:alert(1)", true));
    assert!(!ok("data:text/html,x", true));
}

/// A merge patch of an OIDC connection (issue 7): the client secret is kept
/// unless patched, never shown; the whole result is validated like a
/// creation; the kind cannot change; the revision always changes.
#[tokio::test]
async fn a_merge_patch_keeps_the_write_only_secret_and_validates_the_whole_connection() {
    use portcullis::tenant::setup::{build_connection, describe, patch_connection};
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let tenant = portcullis::ids::TenantId::parse("acme").unwrap();
    let body = json!({"id": "corp", "kind": "oidc", "issuer": idp.issuer, "client_id": CLIENT_ID,
        "client_secret": "s3cret-one", "scopes": ["email"]});
    let conn = build_connection(&ctx, &tenant, body, false).await.unwrap();
    let secret = |c: &portcullis::upstream::Connection| match &c.kind {
        portcullis::upstream::ConnectionKind::Oidc(cfg) => cfg.client_secret.as_ref().map(|s| s.expose().to_owned()),
        _ => panic!("not oidc"),
    };

    let patched = patch_connection(
        &ctx,
        &conn,
        json!({"scopes": ["email", "profile"], "claim_mapping": {"email": "mail"}}),
    )
    .await
    .unwrap();
    assert_eq!(secret(&patched).as_deref(), Some("s3cret-one"), "kept when not patched");
    assert_ne!(patched.revision, conn.revision);
    let view = describe(&ctx, &patched);
    assert_eq!(view["scopes"], json!(["email", "profile"]));
    assert_eq!(view["client_secret_set"], true);
    assert!(!view.to_string().contains("s3cret"), "{view}");
    assert_eq!(view["status"], "active");

    let patched = patch_connection(
        &ctx,
        &patched,
        json!({"client_secret": "s3cret-two", "status": "disabled"}),
    )
    .await
    .unwrap();
    assert_eq!(secret(&patched).as_deref(), Some("s3cret-two"));
    assert_eq!(patched.status, portcullis::upstream::ConnectionStatus::Disabled);

    let err = patch_connection(&ctx, &patched, json!({"kind": "saml"}))
        .await
        .unwrap_err();
    assert_eq!(err.field, "kind");
    let err = patch_connection(&ctx, &patched, json!({"refresh_interval_secs": 5}))
        .await
        .unwrap_err();
    assert_eq!(err.field, "refresh_interval_secs");
    let err = patch_connection(
        &ctx,
        &patched,
        json!({"issuer": "https://evil.example", "client_secret": "s3cret-evil"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.field, "issuer");

    // Another issuer gets the stored secret only from the admin: a patch
    // that moves the issuer without a new secret is refused.
    let other = FakeIdp::start(IdpKey::generate("k2")).await;
    let err = patch_connection(&ctx, &patched, json!({"issuer": other.issuer}))
        .await
        .unwrap_err();
    assert_eq!(err.field, "client_secret", "{}", err.message);
    let moved = patch_connection(
        &ctx,
        &patched,
        json!({"issuer": other.issuer, "client_secret": "s3cret-other"}),
    )
    .await
    .unwrap();
    assert_eq!(secret(&moved).as_deref(), Some("s3cret-other"));
}

/// Set-up is open to tenant admins: what its error says about an issuer's
/// host must not tell a name that resolves to the gateway's private network
/// from one that does not resolve, or set-up maps the internal DNS. Both
/// read `outbound.no_public_address`, word for word apart from the host.
#[tokio::test]
async fn an_issuer_on_a_private_host_name_reads_like_one_that_does_not_resolve() {
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, false);
    let mut seen = Vec::new();
    for host in ["localhost", "portcullis-probe.invalid"] {
        let err = oidc::setup(
            json!({"issuer": format!("https://{host}/realms/a"), "client_id": CLIENT_ID}),
            &ctx,
        )
        .await
        .unwrap_err();
        assert_eq!(err.field, "issuer", "{host}");
        assert!(
            err.message.contains("outbound.no_public_address"),
            "{host}: {}",
            err.message
        );
        seen.push(err.message.replace(host, "HOST"));
    }
    assert_eq!(seen[0], seen[1]);
}

/// An issuer is shown, audited and named in every sign-in's log line: one
/// carrying a user name or password is refused (`oidc.issuer_credentials`)
/// before anything is fetched, and the refusal does not repeat it.
#[tokio::test(flavor = "current_thread")]
async fn an_issuer_carrying_a_password_is_refused_without_repeating_it() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let idp = FakeIdp::start(IdpKey::generate("k1")).await;
    let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let ctx = context(&clock, true);
    let mut issuer = Url::parse(&idp.issuer).unwrap();
    issuer.set_username("svc").unwrap();
    issuer.set_password(Some("issuer-pass-s3cret")).unwrap();
    let err = oidc::setup(json!({"issuer": issuer.as_str(), "client_id": CLIENT_ID}), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.field, "issuer", "{err}");
    assert!(err.message.contains("oidc.issuer_credentials"), "{}", err.message);
    assert!(!err.message.contains("issuer-pass-s3cret"), "{}", err.message);
    assert_eq!(logs.with_reason("oidc.issuer_credentials").len(), 1, "{}", logs.text());
    assert!(!logs.text().contains("issuer-pass-s3cret"), "{}", logs.text());
}
