//! The bindings of an assertion: audience, recipient, destination, issuer,
//! validity windows, InResponseTo, IdP-initiated logins, replay (sequential,
//! parallel), tenants, and concurrency.

use crate::saml_common::*;
use crate::saml_crafted::*;
use chrono::Duration;
use portcullis::upstream::Connector as _;

#[tokio::test]
async fn audience_recipient_destination_issuer_are_enforced() {
    assert_eq!(code("wrong_audience").await, "saml.audience_mismatch");
    assert_eq!(code("no_audience").await, "saml.audience_missing");
    assert_eq!(code("wrong_recipient").await, "saml.recipient_mismatch");
    assert_eq!(code("wrong_destination").await, "saml.destination_mismatch");
    assert_eq!(code("signed_without_destination").await, "saml.destination_mismatch");
    assert_eq!(code("wrong_issuer").await, "saml.issuer_mismatch");
}

/// An Issuer names the IdP as an entity: a `Format` other than
/// `nameid-format:entity` is refused on the Assertion and on the Response
/// (SAML Profiles 4.1.4.2), the entity format itself is accepted.
#[tokio::test]
async fn an_issuer_in_another_format_than_entity_is_issuer_mismatch() {
    assert_eq!(run("issuer_format_entity").await.unwrap().subject, "ada@example.test");
    for name in ["issuer_format_persistent", "response_issuer_format_email"] {
        let e = run(name).await.unwrap_err();
        assert_eq!(e.code, "saml.issuer_mismatch", "{name}");
        assert!(e.detail.contains("Issuer Format"), "{name}: {}", e.detail);
    }
}

/// A signed Response must name its Issuer (SAML Profiles 4.1.4.2); an
/// unsigned one, whose signed Assertion names it, may leave it out.
#[tokio::test]
async fn a_signed_response_without_an_issuer_is_issuer_mismatch() {
    let e = run("signed_response_without_issuer").await.unwrap_err();
    assert_eq!(e.code, "saml.issuer_mismatch");
    assert!(e.detail.contains("no Issuer"), "{}", e.detail);
    assert_eq!(
        run("unsigned_response_without_issuer").await.unwrap().subject,
        "ada@example.test"
    );
}

/// Only bearer SubjectConfirmations confirm a Web SSO subject: holder-of-key
/// and sender-vouches ones, even with the right Recipient, window and
/// InResponseTo, confirm nothing here.
#[tokio::test]
async fn only_a_bearer_subject_confirmation_counts() {
    assert_eq!(
        code("no_bearer_confirmation").await,
        "saml.subject_confirmation_missing"
    );
}

#[tokio::test]
async fn validity_windows_are_enforced_with_bounded_skew() {
    assert_eq!(code("expired").await, "saml.expired");
    assert_eq!(code("not_yet_valid").await, "saml.not_yet_valid");
    assert_eq!(code("scd_expired").await, "saml.expired");
    assert_eq!(
        code("no_scd_not_on_or_after").await,
        "saml.subject_confirmation_expiry_missing"
    );
}

#[tokio::test]
async fn clock_moves_validity() {
    // The same response: accepted at `now`, rejected once the clock passes NotOnOrAfter + skew.
    let (ctx, clock) = ctx_at(now());
    let cfg = setup(
        &ctx,
        "acme",
        "corp",
        serde_json::json!({ "metadata_xml": crafted().metadata }),
    )
    .await;
    let c = connector(&ctx, "acme", "corp", cfg);
    clock.advance(Duration::minutes(5) + Duration::seconds(61));
    let r = complete_xml(&c, Some(&pending(REQ)), xml("ok").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.expired");
    clock.set(now() + Duration::minutes(5) + Duration::seconds(30));
    assert!(complete_xml(&c, Some(&pending(REQ)), xml("ok").as_bytes())
        .await
        .is_ok());
    // NotBefore three minutes ahead: refused at now, accepted within the 60 s skew.
    clock.set(now());
    let r = complete_xml(&c, Some(&pending(REQ)), xml("not_yet_valid").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.not_yet_valid");
    clock.set(now() + Duration::minutes(2) + Duration::seconds(5));
    assert!(complete_xml(&c, Some(&pending(REQ)), xml("not_yet_valid").as_bytes())
        .await
        .is_ok());
}

/// The windows' edges with the 60 s skew, to the millisecond: NotOnOrAfter
/// (here now + 5 min) refuses from NotOnOrAfter + skew on and accepts a
/// millisecond before; NotBefore (now + 3 min) accepts from NotBefore - skew
/// on and refuses a millisecond before.
#[tokio::test]
async fn validity_windows_hold_to_the_millisecond_at_their_edges() {
    let (ctx, clock) = ctx_at(now());
    let cfg = setup(
        &ctx,
        "acme",
        "corp",
        serde_json::json!({ "metadata_xml": crafted().metadata }),
    )
    .await;
    let c = connector(&ctx, "acme", "corp", cfg);
    let ms = Duration::milliseconds(1);
    clock.set(now() + Duration::minutes(6));
    let r = complete_xml(&c, Some(&pending(REQ)), xml("ok").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.expired");
    clock.set(now() + Duration::minutes(6) - ms);
    complete_xml(&c, Some(&pending(REQ)), xml("ok").as_bytes())
        .await
        .unwrap();

    clock.set(now() + Duration::minutes(2) - ms);
    let r = complete_xml(&c, Some(&pending(REQ)), xml("not_yet_valid").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.not_yet_valid");
    clock.set(now() + Duration::minutes(2));
    complete_xml(&c, Some(&pending(REQ)), xml("not_yet_valid").as_bytes())
        .await
        .unwrap();
}

#[tokio::test]
async fn in_response_to_is_bound_to_the_pending_request() {
    assert_eq!(code("wrong_in_response_to").await, "saml.in_response_to_mismatch");
    // A response without InResponseTo cannot complete a pending request.
    assert_eq!(code("unsolicited").await, "saml.in_response_to_mismatch");
    let c = sp().await;
    let r = complete_xml(&c, Some(&pending("_someone_else")), xml("ok").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.in_response_to_mismatch");
}

#[tokio::test]
async fn unsolicited_is_refused_unless_idp_initiated_is_on() {
    let c = sp().await;
    assert!(c.unsolicited_target().is_none());
    let r = complete_xml(&c, None, xml("unsolicited").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.unsolicited_not_allowed");
    let (on, _) = sp_with(
        "acme",
        serde_json::json!({ "allow_idp_initiated": true,
        "default_client_id": "app", "redirect_uri": "https://app.example.test/cb" }),
    )
    .await;
    assert_eq!(on.unsolicited_target().unwrap().0, "app");
    assert!(complete_xml(&on, None, xml("unsolicited").as_bytes()).await.is_ok());
    // ...but an unsolicited post that carries InResponseTo is refused.
    let r = complete_xml(&on, None, xml("ok").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.unsolicited_in_response_to");
}

#[tokio::test]
async fn failure_status_is_reported() {
    let e = run("denied").await.unwrap_err();
    assert_eq!(e.code, "saml.status_not_success");
    assert!(e.message.contains("denied the sign-in"), "{}", e.message);
}

#[tokio::test]
async fn sequential_replay_is_rejected() {
    let (ctx, clock) = ctx_at(now());
    let cfg = setup(
        &ctx,
        "acme",
        "corp",
        serde_json::json!({ "metadata_xml": crafted().metadata }),
    )
    .await;
    let c = connector(&ctx, "acme", "corp", cfg);
    let x = xml("ok");
    assert!(complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.is_ok());
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap_err();
    assert_eq!(e.code, "saml.replay");
    // The replay record outlives the assertion: one second before NotOnOrAfter
    // + skew the assertion is still acceptable, and still refused as a replay.
    clock.set(now() + Duration::minutes(5) + Duration::seconds(59));
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap_err();
    assert_eq!(e.code, "saml.replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_replay_yields_exactly_one_success() {
    let c = std::sync::Arc::new(sp().await);
    let x = xml("ok");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            let x = x.clone();
            tokio::spawn(async move { complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code, "saml.replay"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_responses_complete_concurrently() {
    let c = std::sync::Arc::new(sp().await);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..MANY)
        .map(|i| {
            let c = c.clone();
            let x = xml(&format!("many{i}"));
            tokio::spawn(async move { (i, complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await) })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.unwrap().subject, format!("user{i}@example.test"));
    }
    eprintln!("{MANY} concurrent completes in {:?}", started.elapsed());
}

#[tokio::test]
async fn another_tenants_assertion_is_rejected() {
    // Same IdP configured for both tenants; the response was issued to globex.
    let (globex, _) = sp_with("globex", serde_json::json!({})).await;
    assert!(
        complete_xml(&globex, Some(&pending(REQ)), xml("other_tenant").as_bytes())
            .await
            .is_ok()
    );
    let acme = sp().await;
    let e = complete_xml(&acme, Some(&pending(REQ)), xml("other_tenant").as_bytes())
        .await
        .unwrap_err();
    assert_eq!(e.code, "saml.destination_mismatch");
    // Without the (unsigned) Destination, the signed Recipient still binds it to globex.
    let e = complete_xml(
        &acme,
        Some(&pending(REQ)),
        xml("other_tenant_no_destination").as_bytes(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "saml.recipient_mismatch");
    // And acme's own response is refused by globex.
    let e = complete_xml(&globex, Some(&pending(REQ)), xml("ok").as_bytes())
        .await
        .unwrap_err();
    assert_eq!(e.code, "saml.destination_mismatch");
}
