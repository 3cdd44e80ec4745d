//! Real captured responses (ADFS/Entra, Google, JumpCloud, Keycloak, Okta,
//! PingOne) are accepted at their capture time; the broken variants are
//! rejected for the reason their folder names.

use crate::saml_common::*;
use chrono::{DateTime, Utc};
use portcullis::upstream::saml::SamlConfig;
use portcullis::upstream::{Identity, UpstreamError};

struct Capture {
    xml: Vec<u8>,
    cfg: SamlConfig,
    ctx: portcullis::upstream::UpstreamContext,
}

async fn load(dir: &str) -> Capture {
    let base = fixtures().join(dir);
    let params: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("params.json")).unwrap()).unwrap();
    let now: DateTime<Utc> = params["now"].as_str().unwrap().parse().unwrap();
    let (mut ctx, _clock) = ctx_at(now);
    let metadata = std::fs::read_to_string(base.join("metadata.xml")).unwrap();
    if metadata.contains("Location=\"http://localhost:") {
        // Captured from a local Keycloak: its endpoints are http on loopback,
        // which the IdP URL rule allows only when private networks are.
        ctx.http = portcullis::upstream::http::OutboundHttp::new(portcullis::upstream::http::OutboundConfig {
            allow_private_networks: true,
            ..Default::default()
        })
        .unwrap();
    }
    let xml = std::fs::read(base.join("assertion.xml")).unwrap();
    let text = String::from_utf8_lossy(&xml).into_owned();
    let mut cfg = setup(
        &ctx,
        "acme",
        "idp",
        serde_json::json!({ "metadata_xml": metadata, "allow_idp_initiated": true,
            "default_client_id": "app", "redirect_uri": "https://app.example.test/cb" }),
    )
    .await;
    // Match the capture: its audience and its ACS (Recipient).
    cfg.sp_entity_id = Some(params["sp_entity_id"].as_str().unwrap().to_owned());
    cfg.acs_url = attr_value(&text, "Recipient");
    Capture { xml, cfg, ctx }
}

async fn accept(dir: &str) -> Identity {
    let cap = load(dir).await;
    let text = String::from_utf8_lossy(&cap.xml).into_owned();
    // Captures answering a request bind its id; the others are IdP-initiated.
    let pending = attr_value(&text, "InResponseTo").map(|id| pending(&id));
    let c = connector(&cap.ctx, "acme", "idp", cap.cfg);
    complete_xml(&c, pending.as_ref(), &cap.xml)
        .await
        .unwrap_or_else(|e| panic!("{dir} rejected: {e}"))
}

async fn reject(dir: &str) -> UpstreamError {
    let cap = load(dir).await;
    let c = connector(&cap.ctx, "acme", "idp", cap.cfg);
    complete_xml(&c, None, &cap.xml).await.unwrap_err()
}

#[tokio::test]
async fn adfs_entra_capture_maps_claim_uris() {
    let id = accept("assertions/adfs").await;
    assert_eq!(
        id.subject,
        "ulysse.carion_codomaindata.com#EXT#@ulyssecarioncodomaindata.onmicrosoft.com"
    );
    assert_eq!(id.email.as_deref(), Some("ulysse.carion@codomaindata.com"));
    assert_eq!(id.given_name.as_deref(), Some("Ulysse"));
    assert_eq!(id.family_name.as_deref(), Some("Carion"));
    assert_eq!(id.name.as_deref(), Some("Ulysse Carion"));
    assert_eq!(
        id.raw["http://schemas.microsoft.com/identity/claims/objectidentifier"],
        vec!["74a35d48-1914-4115-82f1-1b8a01449f3d"]
    );
    assert_eq!(
        id.session_index.as_deref(),
        Some("_66b104aa-1f7a-402f-abe6-d131c8896400")
    );
    // Entra's AuthnInstant is the day before: the real sign-in, not the capture time.
    assert_eq!(id.auth_time, Some(instant("2023-11-16T18:57:36.659Z")));
    assert_eq!(id.session_expires_at, None);
}

fn instant(s: &str) -> i64 {
    s.parse::<DateTime<Utc>>().unwrap().timestamp()
}

/// Every capture yields its AuthnInstant as auth_time and its
/// SessionNotOnOrAfter (PingOne's) as the session's end.
#[tokio::test]
async fn captures_yield_auth_time_and_session_end() {
    for (dir, auth, session) in [
        ("assertions/google", Some("2023-11-16T20:51:16.000Z"), None),
        ("assertions/jumpcloud", Some("2023-11-18T16:43:05.562Z"), None),
        ("assertions/okta", Some("2024-04-25T20:26:25.134Z"), None),
        (
            "assertions/ping",
            Some("2023-11-18T16:20:31.265Z"),
            Some("2023-11-18T16:25:31.265Z"),
        ),
    ] {
        let id = accept(dir).await;
        assert_eq!(id.auth_time, auth.map(instant), "{dir}");
        assert_eq!(id.session_expires_at, session.map(instant), "{dir}");
        // SAML has no verified flag and the captures' connections do not trust one.
        assert_eq!(id.email_verified, Some(false), "{dir}");
    }
}

#[tokio::test]
async fn google_capture_is_accepted() {
    let id = accept("assertions/google").await;
    assert_eq!(id.subject, "ulysse.carion@codomaindata.com");
    assert_eq!(id.email.as_deref(), Some("ulysse.carion@codomaindata.com"));
    assert_eq!(id.session_index.as_deref(), Some("_6f7e3b62751ed5bf0adab64936da1e67"));
}

#[tokio::test]
async fn jumpcloud_capture_is_accepted() {
    let id = accept("assertions/jumpcloud").await;
    assert_eq!(id.subject, "ulysse.carion@codomaindata.com");
    assert_eq!(
        id.session_index.as_deref(),
        Some("247ae9c9-2820-42da-9f71-6c940231f614")
    );
}

#[tokio::test]
async fn keycloak_capture_is_accepted_with_its_request_id() {
    // Its metadata's http://localhost endpoints are refused without private networks.
    let base = fixtures().join("assertions/keycloak");
    let (ctx, _) = ctx_at("2024-05-20T21:10:42.468Z".parse().unwrap());
    let e = portcullis::upstream::saml::setup(
        serde_json::json!({ "metadata_xml": std::fs::read_to_string(base.join("metadata.xml")).unwrap() }),
        &ctx,
        &portcullis::ids::TenantId::parse("acme").unwrap(),
        &portcullis::ids::ConnectionId::parse("idp").unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "metadata_xml");
    assert!(e.message.contains("http://localhost:8085"), "{}", e.message);

    let id = accept("assertions/keycloak").await;
    assert_eq!(id.subject, "ulysse.carion@ssoready.com");
    assert_eq!(id.email.as_deref(), Some("ulysse.carion@ssoready.com"));
    let mut roles = id.raw["Role"].clone();
    roles.sort();
    assert_eq!(
        roles,
        vec![
            "default-roles-master",
            "manage-account",
            "manage-account-links",
            "offline_access",
            "uma_authorization",
            "view-profile"
        ]
    );
}

#[tokio::test]
async fn okta_capture_is_accepted() {
    let id = accept("assertions/okta").await;
    assert_eq!(id.subject, "ulysse.carion@codomaindata.com");
    assert_eq!(id.amr, vec!["pwd"]);
    assert_eq!(id.session_index.as_deref(), Some("id1714077115304.328863927"));
}

#[tokio::test]
async fn pingone_capture_is_accepted() {
    let id = accept("assertions/ping").await;
    assert_eq!(id.subject, "9e34fa21-4e8f-4dee-b565-648dbcf25eff");
    assert_eq!(id.raw["saml_subject"], vec!["9e34fa21-4e8f-4dee-b565-648dbcf25eff"]);
}

#[tokio::test]
async fn keycloak_capture_with_another_request_id_is_rejected() {
    let cap = load("assertions/keycloak").await;
    let c = connector(&cap.ctx, "acme", "idp", cap.cfg);
    let e = complete_xml(&c, Some(&pending("_other")), &cap.xml).await.unwrap_err();
    assert_eq!(e.code, "saml.in_response_to_mismatch");
    // Unsolicited, a response carrying InResponseTo is refused too.
    let e = complete_xml(&c, None, &cap.xml).await.unwrap_err();
    assert_eq!(e.code, "saml.unsolicited_in_response_to");
}

#[tokio::test]
async fn bad_assertion_expired_early_is_not_yet_valid() {
    assert_eq!(
        reject("bad-assertions/bad-assertion-expired-early").await.code,
        "saml.not_yet_valid"
    );
}

#[tokio::test]
async fn bad_assertion_expired_late_is_expired() {
    assert_eq!(
        reject("bad-assertions/bad-assertion-expired-late").await.code,
        "saml.expired"
    );
}

#[tokio::test]
async fn bad_assertion_utf8_is_malformed() {
    assert_eq!(reject("bad-assertions/bad-assertion-utf8").await.code, "saml.malformed");
}

#[tokio::test]
async fn bad_certificate_fails_signature() {
    assert_eq!(
        reject("bad-assertions/bad-certificate").await.code,
        "saml.signature_invalid"
    );
}

#[tokio::test]
async fn bad_digest_algorithm_is_refused() {
    assert_eq!(
        reject("bad-assertions/bad-digest-algorithm").await.code,
        "saml.digest_algorithm_not_allowed"
    );
}

#[tokio::test]
async fn bad_signature_algorithm_is_refused() {
    assert_eq!(
        reject("bad-assertions/bad-signature-algorithm").await.code,
        "saml.signature_algorithm_not_allowed"
    );
}

#[tokio::test]
async fn bad_idp_entity_id_is_issuer_mismatch() {
    assert_eq!(
        reject("bad-assertions/bad-idp-entity-id").await.code,
        "saml.issuer_mismatch"
    );
}

#[tokio::test]
async fn bad_sp_entity_id_is_audience_mismatch() {
    assert_eq!(
        reject("bad-assertions/bad-sp-entity-id").await.code,
        "saml.audience_mismatch"
    );
}

#[tokio::test]
async fn no_certificate_is_rejected() {
    assert_eq!(
        reject("bad-assertions/no-certificate").await.code,
        "saml.signature_invalid"
    );
}

/// The capture's assertion lost its signature; what remains is the Response
/// signature, which covered the removed one and so no longer verifies. With
/// no valid signature over the assertion it is refused as `signature_invalid`
/// (a response with no signature at all is `saml.unsigned`: see saml_attacks).
#[tokio::test]
async fn unsigned_assertion_is_rejected() {
    let e = reject("bad-assertions/unsigned-assertion").await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("xmlsec"), "{}", e.detail);
}

/// Polls `fut` once with a waker that does nothing: its output if it
/// finished within that poll.
fn first_poll<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// On a replica with one CPU an ordinary response validates in place, on
/// the async worker (`saml::in_place_bytes_for`): every capture, good and
/// bad, gets the same answer there as on the blocking pool, and in place
/// the whole validation is done within the first poll (a blocking task
/// would leave it pending).
#[tokio::test]
async fn in_place_validation_answers_every_capture_as_the_blocking_pool_does() {
    assert_eq!(portcullis::upstream::saml::in_place_bytes_for(2), 0);
    let in_place = portcullis::upstream::saml::in_place_bytes_for(1);
    assert_eq!(in_place, portcullis::upstream::saml::IN_PLACE_FORM_BYTES);
    let dirs = std::fs::read_dir(fixtures().join("assertions"))
        .unwrap()
        .chain(std::fs::read_dir(fixtures().join("bad-assertions")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("params.json").exists())
        .map(|p| {
            let parent = p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
            format!("{parent}/{}", p.file_name().unwrap().to_string_lossy())
        })
        .collect::<Vec<_>>();
    assert!(dirs.len() >= 14, "{dirs:?}");
    let outcome = |r: Result<Identity, UpstreamError>| match r {
        Ok(id) => format!("ok {}", id.subject),
        Err(e) => format!("refused {}", e.code),
    };
    let mut accepted = 0;
    for dir in &dirs {
        // Each side on a store of its own: the second validation of an
        // assertion on one store is a replay.
        let cap = load(dir).await;
        let text = String::from_utf8_lossy(&cap.xml).into_owned();
        let pending = attr_value(&text, "InResponseTo").map(|id| pending(&id));
        let pooled = connector(&cap.ctx, "acme", "idp", cap.cfg);
        let pooled = outcome(complete_xml(&pooled, pending.as_ref(), &cap.xml).await);
        let cap = load(dir).await;
        let mut ctx = cap.ctx.clone();
        ctx.saml_in_place_bytes = in_place;
        let c = connector(&ctx, "acme", "idp", cap.cfg);
        let here = first_poll(complete_xml(&c, pending.as_ref(), &cap.xml))
            .unwrap_or_else(|| panic!("{dir}: the in-place validation did not finish within its first poll"));
        assert_eq!(outcome(here), pooled, "{dir}");
        accepted += usize::from(pooled.starts_with("ok "));
    }
    // Both kinds were compared.
    assert!(accepted >= 6 && accepted < dirs.len(), "{accepted} of {}", dirs.len());
}
