//! The callback checks around the ID token: state, RFC 9207 `iss`, IdP errors,
//! the code exchange and userinfo.

use super::*;

#[tokio::test]
async fn happy_path_maps_identity_with_pkce_and_userinfo() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    // The authorization request.
    assert_eq!(query(&login.url, "response_type").as_deref(), Some("code"));
    assert_eq!(query(&login.url, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(query(&login.url, "state"), Some(login.login_id.clone()));
    assert_eq!(query(&login.url, "scope").as_deref(), Some("openid email profile"));
    assert_eq!(
        query(&login.url, "redirect_uri").as_deref(),
        Some("https://gw.example.com/oidc/acme/corp-idp/callback")
    );
    assert_eq!(
        oidc::redirect_uri(&f.ctx, &f.connection).as_str(),
        "https://gw.example.com/oidc/acme/corp-idp/callback"
    );
    assert_eq!(query(&login.url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query(&login.url, "prompt"), None);
    assert!(login.url.as_str().starts_with(&format!("{}/authorize?", f.idp.issuer)));

    let claims = f.claims(&login);
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.subject, "user-1");
    assert_eq!(id.email.as_deref(), Some("ada@acme.example"));
    assert_eq!(id.email_verified, Some(true));
    assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(id.given_name.as_deref(), Some("Ada"));
    assert_eq!(id.family_name.as_deref(), Some("Lovelace"));
    assert_eq!(id.groups, vec!["staff", "admins"]); // from userinfo
    assert_eq!(id.amr, vec!["pwd", "otp"]);
    assert_eq!(id.raw["locale"], vec!["de"]);
    assert_eq!(id.raw["iss"], vec![f.idp.issuer.clone()]);

    // The code exchange: client_secret_basic and the PKCE verifier whose S256
    // is the challenge we sent.
    let (form, auth) = f.idp.with(|s| s.token_requests.last().cloned().unwrap());
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "code-123");
    assert_eq!(
        form["redirect_uri"],
        "https://gw.example.com/oidc/acme/corp-idp/callback"
    );
    assert!(!form.contains_key("client_secret"));
    let verifier = &form["code_verifier"];
    assert_eq!(
        b64(&Sha256::digest(verifier.as_bytes())),
        query(&login.url, "code_challenge").unwrap()
    );
    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{CLIENT_ID}:{}",
            url::form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
        ))
    );
    assert_eq!(auth.as_deref(), Some(expected_basic.as_str()));
}

#[tokio::test]
async fn begin_passes_force_authn_and_login_hint_with_fresh_nonces() {
    let f = Fixture::new().await;
    let begun = f
        .connector
        .begin(BeginRequest {
            login_id: "l-1",
            force_authn: true,
            login_hint: Some("ada@acme.example"),
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = begun.redirect else {
        panic!()
    };
    assert_eq!(query(&url, "prompt").as_deref(), Some("login"));
    assert_eq!(query(&url, "login_hint").as_deref(), Some("ada@acme.example"));
    assert_eq!(begun.state["state"], "l-1");
    assert_eq!(begun.state["nonce"].as_str(), query(&url, "nonce").as_deref());
    let other = f.begin().await;
    assert_ne!(other.nonce, query(&url, "nonce").unwrap());
    assert!(other.nonce.len() >= 43);
}

#[tokio::test]
async fn client_secret_post_when_the_idp_only_supports_it() {
    let f = Fixture::new().await;
    f.idp.with(|s| s.auth_methods = Some(vec!["client_secret_post".into()]));
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims).await.unwrap();
    let (form, auth) = f.idp.with(|s| s.token_requests.last().cloned().unwrap());
    assert_eq!(auth, None);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
}

#[tokio::test]
async fn missing_state_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.remove("state");
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(code(f.finish(&login, token, params).await), "oidc.state_missing");
}

#[tokio::test]
async fn wrong_state_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let other = f.begin().await;
    // The callback of `other` presented against `login`'s pending state.
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&other)).await),
        "oidc.state_mismatch"
    );
}

#[tokio::test]
async fn unsolicited_callback_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let r = f.connector.complete(None, &f.callback(&login)).await;
    assert_eq!(code(r), "oidc.unsolicited");
}

#[tokio::test]
async fn idp_access_denied_is_reported() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.remove("code");
    params.query.insert("error".into(), "access_denied".into());
    params.query.insert("error_description".into(), "User cancelled".into());
    let err = f.connector.complete(Some(&login.pending), &params).await.unwrap_err();
    assert_eq!(err.code, "oidc.idp_error");
    assert!(err.message.contains("denied"), "{}", err.message);
    assert!(!err.internal);
    // Nothing was exchanged.
    assert!(f.idp.with(|s| s.token_requests.is_empty()));
}

#[tokio::test]
async fn rfc9207_iss_parameter_mismatch_is_rejected() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.insert("iss".into(), "https://attacker.example".into());
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(code(f.finish(&login, token, params).await), "oidc.iss_mismatch");
    // Nothing was exchanged with the IdP.
    assert!(f.idp.with(|s| s.token_requests.is_empty()));
}

/// A mix-up of the connection's own making: a login begun at one issuer
/// whose connection was re-pointed at another (a PATCH keeping the users)
/// before the IdP answered. The answer's code and PKCE verifier are the
/// first issuer's: refused (`oidc.issuer_changed`) before anything is sent
/// to the new issuer's token endpoint. A login begun before the issuer was
/// kept in its state still finishes.
#[tokio::test]
async fn an_answer_to_a_login_begun_at_another_issuer_is_never_redeemed_at_this_one() {
    let before = Fixture::new().await;
    let after = Fixture::new().await;
    assert_ne!(before.idp.issuer, after.idp.issuer);
    let login = before.begin().await;
    after.idp.issue_code("code-123", &login.url);
    after
        .idp
        .with(|s| s.id_token = Some(after.key.sign(&before.claims(&login))));
    let refused = after
        .connector
        .complete(Some(&login.pending), &before.callback(&login))
        .await;
    assert_eq!(code(refused), "oidc.issuer_changed");
    assert!(
        after.idp.with(|s| s.token_requests.is_empty()),
        "code sent to the new issuer"
    );

    // The same login at the issuer it was begun at finishes.
    let claims = before.claims(&login);
    before.finish_claims(&login, claims).await.unwrap();
    // So does one whose state predates the field.
    let mut old = before.begin().await;
    old.pending.as_object_mut().unwrap().remove("issuer").unwrap();
    let claims = before.claims(&old);
    before.finish_claims(&old, claims).await.unwrap();
}

#[tokio::test]
async fn rfc9207_iss_parameter_is_required_when_advertised() {
    let f = Fixture::new().await;
    f.idp.with(|s| s.iss_parameter_supported = true);
    // The connector has not fetched discovery yet, so it sees the flag.
    let login = f.begin().await;
    let token = f.key.sign(&f.claims(&login));
    assert_eq!(
        code(f.finish(&login, token, f.callback(&login)).await),
        "oidc.iss_missing"
    );
    // With the right iss it is accepted.
    let login = f.begin().await;
    let mut params = f.callback(&login);
    params.query.insert("iss".into(), f.idp.issuer.clone());
    let token = f.key.sign(&f.claims(&login));
    f.finish(&login, token, params).await.unwrap();
}

#[tokio::test]
async fn iss_parameter_is_optional_when_not_advertised() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let claims = f.claims(&login);
    // `callback` carries no iss; the IdP does not advertise RFC 9207.
    f.finish_claims(&login, claims).await.unwrap();
}

#[tokio::test]
async fn userinfo_for_another_subject_is_rejected() {
    let f = Fixture::new().await;
    f.idp.with(|s| s.userinfo_sub = "user-2".into());
    let login = f.begin().await;
    let claims = f.claims(&login);
    assert_eq!(
        code(f.finish_claims(&login, claims).await),
        "oidc.userinfo_sub_mismatch"
    );
}

#[tokio::test]
async fn token_endpoint_failures_and_missing_id_token() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    // The token endpoint returns no id_token (the fake returns null).
    let r = f.connector.complete(Some(&login.pending), &f.callback(&login)).await;
    assert_eq!(code(r), "oidc.id_token_missing");
    // A callback without a code.
    let mut params = f.callback(&login);
    params.query.remove("code");
    let r = f.connector.complete(Some(&login.pending), &params).await;
    assert_eq!(code(r), "oidc.code_missing");
}

#[tokio::test]
async fn begin_forwards_max_age() {
    let f = Fixture::new().await;
    let begun = f
        .connector
        .begin(BeginRequest {
            login_id: "l-2",
            force_authn: false,
            login_hint: None,
            max_age: Some(300),
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = begun.redirect else {
        panic!()
    };
    assert_eq!(query(&url, "max_age").as_deref(), Some("300"));
    assert_eq!(query(&url, "prompt"), None);
}

#[tokio::test]
async fn auth_time_comes_from_the_signed_id_token_only() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["auth_time"] = json!(f.clock.unix() - 42);
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.auth_time, Some(f.clock.unix() - 42));

    // Userinfo cannot vouch for when the person authenticated.
    f.idp.with(|s| s.userinfo_claims["auth_time"] = json!(f.clock.unix()));
    let login = f.begin().await;
    let claims = f.claims(&login);
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.auth_time, None);

    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["auth_time"] = json!("yesterday");
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.id_token_malformed");
}

/// An `auth_time` ahead of now beyond the skew would make any
/// authentication look fresh to `max_age` and `prompt=login`: refused, as
/// SAML's `AuthnInstant` is. Within the skew it passes.
#[tokio::test]
async fn an_auth_time_from_the_future_is_refused() {
    let f = Fixture::new().await;
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["auth_time"] = json!(f.clock.unix() + SKEW + 1);
    assert_eq!(code(f.finish_claims(&login, claims).await), "oidc.auth_time_in_future");

    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["auth_time"] = json!(f.clock.unix() + SKEW);
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.auth_time, Some(f.clock.unix() + SKEW));
}

/// The token response's `expires_in` is not read (the ID token's `exp`
/// is what counts): left out or as large as a u64 holds it changes
/// nothing; one that is not a u64 (negative, a fraction, beyond u64) fails
/// the exchange as an invalid token response, never a panic or a wrap.
#[tokio::test]
async fn a_token_response_expires_in_out_of_range_fails_closed() {
    let f = Fixture::new().await;
    for ok in [Value::Null, json!(0), json!(u64::MAX)] {
        f.idp.with(|s| s.expires_in = ok.clone());
        let login = f.begin().await;
        let claims = f.claims(&login);
        f.finish_claims(&login, claims)
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    for bad in [json!(-1), json!(3599.5), json!(1e20)] {
        f.idp.with(|s| s.expires_in = bad.clone());
        let login = f.begin().await;
        let claims = f.claims(&login);
        assert_eq!(
            code(f.finish_claims(&login, claims).await),
            "oidc.token_response_invalid",
            "{bad}"
        );
    }
}

/// Azure AD v1 sends `expires_in` as text (`"3599"`): a string of ASCII
/// digits that fits a u64 is read as its number, at the code exchange and
/// at the upstream refresh (it used to fail every sign-in as an invalid
/// token response). Any other text still fails closed: at sign-in
/// `oidc.token_response_invalid`, at refresh the transient
/// `oidc.refresh_unavailable` naming it.
#[tokio::test]
async fn a_token_response_expires_in_as_text_counts_only_as_plain_digits() {
    use portcullis::secret::Secret;
    let f = Fixture::new().await;
    f.idp.with(|s| s.refresh_token = Some("rt-1".into()));
    let mut refresh_token = "rt-1".to_owned();
    for ok in ["3599", "0", "18446744073709551615"] {
        f.idp.with(|s| s.expires_in = json!(ok));
        let login = f.begin().await;
        let claims = f.claims(&login);
        f.finish_claims(&login, claims.clone())
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        let mut refreshed = claims;
        refreshed.as_object_mut().unwrap().remove("nonce");
        f.idp.with(|s| s.id_token = Some(f.key.sign(&refreshed)));
        let next = f
            .connector
            .refresh(&Secret::new(refresh_token.clone()), Some("user-1"))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {:?}", e.error));
        refresh_token.push('+');
        assert_eq!(next, Some(Secret::new(refresh_token.clone())), "{ok}");
    }
    for bad in [
        "abc",
        "-1",
        " 3599",
        "3599 ",
        "+3599",
        "1e3",
        "3599.0",
        "",
        "18446744073709551616",
    ] {
        f.idp.with(|s| s.expires_in = json!(bad));
        let login = f.begin().await;
        let claims = f.claims(&login);
        assert_eq!(
            code(f.finish_claims(&login, claims.clone()).await),
            "oidc.token_response_invalid",
            "{bad:?}"
        );
        let mut refreshed = claims;
        refreshed.as_object_mut().unwrap().remove("nonce");
        f.idp.with(|s| s.id_token = Some(f.key.sign(&refreshed)));
        let failed = f
            .connector
            .refresh(&Secret::new(refresh_token.clone()), Some("user-1"))
            .await
            .unwrap_err();
        refresh_token.push('+');
        assert_eq!(failed.error.code, "oidc.refresh_unavailable", "{bad:?}");
        assert!(
            failed.error.detail.starts_with("oidc.token_response_invalid"),
            "{bad:?}: {}",
            failed.error.detail
        );
    }
}

/// How the person authenticated (`acr`, `amr`) and the other claims only
/// the signed ID token may carry are never taken from the unsigned
/// userinfo answer, which could otherwise satisfy `require_mfa`; its
/// profile claims still fill what the ID token lacks.
#[tokio::test]
async fn acr_and_amr_come_from_the_signed_id_token_only() {
    let f = Fixture::new().await;
    f.idp.with(|s| {
        s.userinfo_claims["acr"] = json!("http://schemas.openid.net/pape/policies/2007/06/multi-factor");
        s.userinfo_claims["amr"] = json!(["mfa"]);
        s.userinfo_claims["sid"] = json!("from-userinfo");
        s.userinfo_claims["azp"] = json!("someone-else");
    });
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    let token = claims.as_object_mut().unwrap();
    token.remove("amr");
    token.remove("acr");
    let id = f.finish_claims(&login, claims).await.unwrap();
    assert_eq!(id.acr, None);
    assert!(id.amr.is_empty(), "{:?}", id.amr);
    for claim in ["acr", "amr", "sid", "azp"] {
        assert!(!id.raw.contains_key(claim), "{claim}: {:?}", id.raw);
    }
    assert_eq!(
        id.groups,
        vec!["staff", "admins"],
        "profile claims still come from userinfo"
    );
}

#[tokio::test]
async fn the_fake_idp_refuses_a_wrong_pkce_verifier_an_unknown_code_and_a_wrong_secret() {
    let f = Fixture::new().await;
    // Login A's pending state, but the IdP issued the code to login B's
    // request: A's verifier does not hash to B's challenge.
    let a = f.begin().await;
    let _b = f.begin().await;
    let token = f.key.sign(&f.claims(&a));
    assert_eq!(
        code(f.finish(&a, token.clone(), f.callback(&a)).await),
        "oidc.token_rejected"
    );
    // The code was spent by that attempt, as at a real IdP.
    assert_eq!(code(f.finish(&a, token, f.callback(&a)).await), "oidc.token_rejected");

    // A connector with the wrong client secret is refused (invalid_client).
    let mut cfg = match &f.connection.kind {
        ConnectionKind::Oidc(cfg) => cfg.clone(),
        _ => unreachable!(),
    };
    cfg.client_secret = Some(portcullis::secret::Secret::new("not-the-secret"));
    let wrong = OidcConnector::new(&f.connection, cfg, f.ctx.clone()).unwrap();
    let begun = wrong
        .begin(BeginRequest {
            login_id: "w-1",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = begun.redirect else {
        panic!()
    };
    f.idp.issue_code("code-123", &url);
    let mut claims = f.claims(&a);
    claims["nonce"] = json!(query(&url, "nonce").unwrap());
    f.idp.with(|s| s.id_token = Some(f.key.sign(&claims)));
    let mut params = CallbackParams::default();
    params.query.insert("state".into(), "w-1".into());
    params.query.insert("code".into(), "code-123".into());
    let err = wrong.complete(Some(&begun.state), &params).await.unwrap_err();
    assert!(
        err.code == "oidc.token_rejected" || err.code == "oidc.token_endpoint",
        "{err:?}"
    );
    assert!(err.detail.contains("invalid_client"), "{}", err.detail);
}

#[tokio::test]
async fn upstream_refresh_verifies_the_refreshed_id_token() {
    use portcullis::secret::Secret;
    let f = Fixture::new().await;
    f.idp.with(|s| s.refresh_token = Some("rt-1".into()));
    let login = f.begin().await;
    let claims = f.claims(&login);
    let id = f.finish_claims(&login, claims.clone()).await.unwrap();
    assert_eq!(id.upstream_refresh_token, Some(Secret::new("rt-1")));

    // OIDC Core §12.2: same person, no nonce; the rotated token is kept.
    let mut refreshed = claims.clone();
    refreshed.as_object_mut().unwrap().remove("nonce");
    f.idp.with(|s| s.id_token = Some(f.key.sign(&refreshed)));
    let next = f.connector.refresh(&Secret::new("rt-1"), Some("user-1")).await.unwrap();
    assert_eq!(next, Some(Secret::new("rt-1+")));

    // An ID token about someone else ends the session.
    let mut other = refreshed.clone();
    other["sub"] = json!("user-2");
    f.idp.with(|s| s.id_token = Some(f.key.sign(&other)));
    let err = f
        .connector
        .refresh(&Secret::new("rt-1+"), Some("user-1"))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, "oidc.refresh_subject_changed");
    assert!(!err.error.internal);

    // A forged one too.
    let forger = IdpKey::generate("k1");
    f.idp.with(|s| s.id_token = Some(forger.sign(&refreshed)));
    let err = f
        .connector
        .refresh(&Secret::new("rt-1++"), Some("user-1"))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, "oidc.bad_signature");
    assert!(!err.error.internal);

    // A refresh token the IdP does not know is its refusal.
    let err = f
        .connector
        .refresh(&Secret::new("nope"), Some("user-1"))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, "oidc.refresh_refused");
    assert!(!err.error.internal);
}

/// OIDC Core §12.2 and §3.1.3.8: the ID token of an upstream refresh is
/// checked like the first, its `at_hash` included, against the access
/// token of the refresh's own answer. The right one and none pass; one of
/// another access token (the sign-in's, where the refresh issued a new one)
/// is the IdP's unverifiable answer: refused, not transient.
#[tokio::test]
async fn an_upstream_refresh_checks_the_at_hash_of_its_id_token() {
    use portcullis::secret::Secret;
    let f = Fixture::new().await;
    f.idp.with(|s| s.refresh_token = Some("rt-1".into()));
    let login = f.begin().await;
    let mut claims = f.claims(&login);
    claims["at_hash"] = json!(at_hash::<Sha256>(ACCESS_TOKEN));
    f.finish_claims(&login, claims.clone()).await.unwrap();

    let mut refreshed = claims.clone();
    refreshed.as_object_mut().unwrap().remove("nonce");
    f.idp.with(|s| s.id_token = Some(f.key.sign(&refreshed)));
    let next = f.connector.refresh(&Secret::new("rt-1"), Some("user-1")).await.unwrap();
    assert_eq!(next, Some(Secret::new("rt-1+")));

    refreshed.as_object_mut().unwrap().remove("at_hash");
    f.idp.with(|s| s.id_token = Some(f.key.sign(&refreshed)));
    let next = f
        .connector
        .refresh(&Secret::new("rt-1+"), Some("user-1"))
        .await
        .unwrap();
    assert_eq!(next, Some(Secret::new("rt-1++")));

    // The refresh issues a new access token; the ID token still carries the
    // sign-in's at_hash.
    refreshed["at_hash"] = json!(at_hash::<Sha256>(ACCESS_TOKEN));
    f.idp.with(|s| {
        s.access_token = "access-token-2".into();
        s.id_token = Some(f.key.sign(&refreshed));
    });
    let err = f
        .connector
        .refresh(&Secret::new("rt-1++"), Some("user-1"))
        .await
        .unwrap_err();
    assert_eq!(err.error.code, "oidc.at_hash_mismatch");
    assert!(!err.error.internal);

    // The same ID token with the new access token's at_hash passes.
    refreshed["at_hash"] = json!(at_hash::<Sha256>("access-token-2"));
    f.idp.with(|s| s.id_token = Some(f.key.sign(&refreshed)));
    let next = f
        .connector
        .refresh(&Secret::new("rt-1+++"), Some("user-1"))
        .await
        .unwrap_or_else(|e| panic!("{:?}", e.error));
    assert_eq!(next, Some(Secret::new("rt-1++++")));
}

/// A refresh whose ID token cannot be checked now (a new signing key, and
/// the IdP's JWKS endpoint down) is a transient failure, not a
/// confirmation, but the IdP has spent the token sent: the connector hands
/// on the token it rotated to, which the broker keeps
/// (`upstream_refresh::settle`). It used to be dropped, and the next
/// refresh sent the spent token and ended the session.
#[tokio::test]
async fn a_refresh_whose_id_token_cannot_be_checked_now_hands_on_the_rotated_token() {
    use portcullis::secret::Secret;
    let f = Fixture::new().await;
    f.idp.with(|s| s.refresh_token = Some("rt-1".into()));
    let login = f.begin().await;
    let claims = f.claims(&login);
    f.finish_claims(&login, claims.clone()).await.unwrap();

    // The IdP rotates its signing key and its JWKS endpoint fails.
    let rotated_key = IdpKey::generate("k2");
    let mut refreshed = claims.clone();
    refreshed.as_object_mut().unwrap().remove("nonce");
    f.idp.with(|s| {
        s.id_token = Some(rotated_key.sign(&refreshed));
        s.jwks_failing = Some(503);
    });
    let failed = f
        .connector
        .refresh(&Secret::new("rt-1"), Some("user-1"))
        .await
        .unwrap_err();
    assert!(failed.error.internal, "{:?}", failed.error);
    assert_eq!(failed.rotated, Some(Secret::new("rt-1+")), "{:?}", failed.error);

    // The keys are back, but the JWKS was asked moments ago and is not
    // asked again yet: the key is not known to be missing, so this is
    // transient too (it used to be `oidc.unknown_kid`, the IdP's refusal,
    // which ended the session), and the newest token is handed on again.
    f.idp.with(|s| {
        s.jwks_failing = None;
        s.published.push(rotated_key.clone());
    });
    let failed = f
        .connector
        .refresh(&Secret::new("rt-1+"), Some("user-1"))
        .await
        .unwrap_err();
    assert_eq!(failed.error.code, "oidc.jwks_refetch_limited");
    assert!(failed.error.internal);
    assert_eq!(failed.rotated, Some(Secret::new("rt-1++")));

    // After the refetch window, the kept token refreshes.
    f.clock.advance(chrono::Duration::seconds(
        i64::try_from(portcullis::upstream::oidc::provider::JWKS_REFETCH_WINDOW_SECS).unwrap() + 1,
    ));
    let next = f
        .connector
        .refresh(&Secret::new("rt-1++"), Some("user-1"))
        .await
        .unwrap_or_else(|e| panic!("{:?}", e.error));
    assert_eq!(next, Some(Secret::new("rt-1+++")));
}
