//! One negative test per ACS defence, with responses signed by signxml
//! (tests/peers/saml/craft.py), not by the code under test.

use crate::saml_common::*;
use chrono::{DateTime, Duration, Utc};
use portcullis::upstream::saml::SamlConnector;
use portcullis::upstream::{Identity, UpstreamContext, UpstreamError};
use std::sync::OnceLock;

const IDP: &str = "https://idp.craft.test/entity";
const REQ: &str = "_req1";
/// Distinct valid responses completed at once in the concurrency test.
const MANY: usize = 48;

fn now() -> DateTime<Utc> {
    "2030-01-01T12:00:00Z".parse().unwrap()
}

fn ts(d: Duration) -> String {
    (now() + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn sp_entity(tenant: &str) -> String {
    format!("https://sso.example.test/saml/{tenant}/corp/metadata")
}

fn acs(tenant: &str) -> String {
    format!("https://sso.example.test/saml/{tenant}/corp/acs")
}

/// A valid case for tenant `acme`, with `over` fields replaced.
fn case(name: &str, over: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "name": name,
        "sp_entity_id": sp_entity("acme"),
        "acs_url": acs("acme"),
        "in_response_to": REQ,
        "name_id": "ada@example.test",
        "attributes": { "email": ["ada@example.test"], "firstName": ["Ada"], "lastName": ["Lovelace"],
                        "groups": ["eng", "ops"] },
        "issue_instant": ts(Duration::zero()),
        "not_before": ts(Duration::minutes(-1)),
        "not_on_or_after": ts(Duration::minutes(5)),
        "scd_not_on_or_after": ts(Duration::minutes(5)),
        "sign": "assertion",
    });
    for (k, v) in over.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn cases() -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut v = vec![
        case("ok", json!({})),
        case("ok_response_signed", json!({ "sign": "response" })),
        case("ok_both_signed", json!({ "sign": "both" })),
        case("unsolicited", json!({ "in_response_to": null })),
        case("strip_signature", json!({ "variant": "strip_signature" })),
        case("unsigned", json!({ "sign": "none" })),
        case("tamper_name_id", json!({ "variant": "tamper_name_id" })),
        case(
            "tamper_signed_response",
            json!({ "sign": "response", "variant": "tamper_name_id" }),
        ),
        case("attacker_key", json!({ "attacker_key": true })),
        case(
            "comment_in_name_id",
            json!({ "name_id": "admin@corp.test.evil.test",
            "comment_at": ".evil.test", "variant": "comment_in_name_id", "attributes": {} }),
        ),
        case(
            "other_tenant_no_destination",
            json!({ "sp_entity_id": sp_entity("globex"),
            "acs_url": acs("globex"), "destination": null }),
        ),
        case("sha1", json!({ "sig_alg": "rsa-sha1", "digest": "sha1" })),
        case("sha1_digest", json!({ "digest": "sha1" })),
        case(
            "wrong_audience",
            json!({ "audience": "https://sp.elsewhere.test" }),
        ),
        case("no_audience", json!({ "audience": null })),
        case(
            "wrong_recipient",
            json!({ "recipient": "https://sp.elsewhere.test/acs" }),
        ),
        case(
            "wrong_destination",
            json!({ "destination": "https://sp.elsewhere.test/acs" }),
        ),
        case(
            "signed_without_destination",
            json!({ "sign": "response", "destination": null }),
        ),
        case(
            "wrong_issuer",
            json!({ "assertion_issuer": "https://idp.evil.test" }),
        ),
        case(
            "expired",
            json!({ "not_on_or_after": ts(Duration::minutes(-2)) }),
        ),
        case(
            "not_yet_valid",
            json!({ "not_before": ts(Duration::minutes(3)) }),
        ),
        case(
            "scd_expired",
            json!({ "scd_not_on_or_after": ts(Duration::minutes(-2)) }),
        ),
        case(
            "no_scd_not_on_or_after",
            json!({ "scd_not_on_or_after": null }),
        ),
        case(
            "wrong_in_response_to",
            json!({ "in_response_to": "_other" }),
        ),
        case(
            "denied",
            json!({ "sign": "response",
            "status": "urn:oasis:names:tc:SAML:2.0:status:Requester",
            "sub_status": "urn:oasis:names:tc:SAML:2.0:status:RequestDenied" }),
        ),
        case(
            "other_tenant",
            json!({ "sp_entity_id": sp_entity("globex"), "acs_url": acs("globex") }),
        ),
        case(
            "entra",
            json!({ "name_id": "oid-7", "attributes": {
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress": ["grace@contoso.test"],
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname": ["Grace"],
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname": ["Hopper"],
            "http://schemas.microsoft.com/identity/claims/displayname": ["Grace Hopper"],
            "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups": ["g-1", "g-2"],
            "http://schemas.microsoft.com/identity/claims/objectidentifier": ["0000-oid"] } }),
        ),
    ];
    for w in [
        "wrap_before",
        "wrap_after",
        "wrap_around",
        "wrap_extensions",
        "wrap_advice",
        "wrap_object",
    ] {
        v.push(case(w, json!({ "variant": w })));
    }
    for i in 0..MANY {
        v.push(case(
            &format!("many{i}"),
            json!({ "name_id": format!("user{i}@example.test") }),
        ));
    }
    v
}

struct Crafted {
    metadata: String,
    responses: serde_json::Value,
}

/// All crafted responses, made once per test run (one Python start).
fn crafted() -> &'static Crafted {
    static C: OnceLock<Crafted> = OnceLock::new();
    C.get_or_init(|| {
        let out = peer(
            "craft.py",
            &serde_json::json!({ "idp": { "entity_id": IDP }, "cases": cases() }),
        );
        Crafted {
            metadata: out["metadata"].as_str().unwrap().to_owned(),
            responses: out["responses"].clone(),
        }
    })
}

fn xml(name: &str) -> String {
    crafted().responses[name].as_str().unwrap().to_owned()
}

async fn sp_with(tenant: &str, extra: serde_json::Value) -> (SamlConnector, UpstreamContext) {
    let (ctx, _) = ctx_at(now());
    let mut body = serde_json::json!({ "metadata_xml": crafted().metadata });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let cfg = setup(&ctx, tenant, "corp", body).await;
    (connector(&ctx, tenant, "corp", cfg), ctx)
}

async fn sp() -> SamlConnector {
    sp_with("acme", serde_json::json!({})).await.0
}

async fn run(name: &str) -> Result<Identity, UpstreamError> {
    complete_xml(&sp().await, Some(&pending(REQ)), xml(name).as_bytes()).await
}

async fn code(name: &str) -> &'static str {
    match run(name).await {
        Ok(id) => panic!("{name} was accepted as {}", id.subject),
        Err(e) => e.code,
    }
}

#[tokio::test]
async fn valid_signed_assertion_is_accepted_with_mapped_claims() {
    let id = run("ok").await.unwrap();
    assert_eq!(id.subject, "ada@example.test");
    assert_eq!(id.email.as_deref(), Some("ada@example.test"));
    assert_eq!(id.given_name.as_deref(), Some("Ada"));
    assert_eq!(id.family_name.as_deref(), Some("Lovelace"));
    assert_eq!(id.groups, vec!["eng", "ops"]);
    assert!(id.session_index.unwrap().starts_with("_sess-"));
}

#[tokio::test]
async fn valid_signed_response_and_both_signed_are_accepted() {
    assert_eq!(
        run("ok_response_signed").await.unwrap().subject,
        "ada@example.test"
    );
    assert_eq!(
        run("ok_both_signed").await.unwrap().subject,
        "ada@example.test"
    );
}

#[tokio::test]
async fn entra_shaped_claims_map() {
    let id = run("entra").await.unwrap();
    assert_eq!(id.subject, "oid-7");
    assert_eq!(id.email.as_deref(), Some("grace@contoso.test"));
    assert_eq!(id.given_name.as_deref(), Some("Grace"));
    assert_eq!(id.family_name.as_deref(), Some("Hopper"));
    assert_eq!(id.name.as_deref(), Some("Grace Hopper"));
    assert_eq!(id.groups, vec!["g-1", "g-2"]);
    assert_eq!(
        id.raw["http://schemas.microsoft.com/identity/claims/objectidentifier"],
        vec!["0000-oid"]
    );
}

#[tokio::test]
async fn signature_wrapping_variants_are_rejected() {
    for w in [
        "wrap_before",
        "wrap_after",
        "wrap_around",
        "wrap_extensions",
        "wrap_advice",
        "wrap_object",
    ] {
        assert_eq!(code(w).await, "saml.assertion_count", "{w}");
    }
}

#[tokio::test]
async fn removed_signature_is_rejected() {
    assert_eq!(code("strip_signature").await, "saml.unsigned");
    assert_eq!(code("unsigned").await, "saml.unsigned");
}

#[tokio::test]
async fn tampered_content_is_rejected() {
    assert_eq!(code("tamper_name_id").await, "saml.signature_invalid");
    assert_eq!(
        code("tamper_signed_response").await,
        "saml.signature_invalid"
    );
}

#[tokio::test]
async fn attacker_key_in_key_info_is_not_trusted() {
    let x = xml("attacker_key");
    assert!(
        x.contains("X509Certificate"),
        "the attacker ships its certificate"
    );
    assert_eq!(code("attacker_key").await, "saml.signature_invalid");
}

/// The classic attack: a comment injected after signing. Exclusive c14n
/// ignores comments, so the signature alone still verifies; samael's
/// reduction then finds the document differs from the signed content and
/// refuses it, so a truncated `admin@corp.test` can never come out. (That a
/// comment never shortens a value we read is the unit test
/// `xml::tests::comment_does_not_truncate_text`.)
#[tokio::test]
async fn comment_injected_into_name_id_is_refused() {
    let x = xml("comment_in_name_id");
    assert!(x.contains("admin@corp.test<!---->.evil.test"));
    let e = run("comment_in_name_id").await.unwrap_err();
    assert_eq!(e.code, "saml.signature_invalid");
}

#[tokio::test]
async fn sha1_is_refused_unless_opted_in() {
    assert_eq!(code("sha1").await, "saml.signature_algorithm_not_allowed");
    assert_eq!(
        code("sha1_digest").await,
        "saml.digest_algorithm_not_allowed"
    );
    let (c, _) = sp_with(
        "acme",
        serde_json::json!({ "allowed_algorithms": ["rsa-sha256", "rsa-sha1"] }),
    )
    .await;
    let id = complete_xml(&c, Some(&pending(REQ)), xml("sha1").as_bytes())
        .await
        .unwrap();
    assert_eq!(id.subject, "ada@example.test");
}

#[tokio::test]
async fn audience_recipient_destination_issuer_are_enforced() {
    assert_eq!(code("wrong_audience").await, "saml.audience_mismatch");
    assert_eq!(code("no_audience").await, "saml.audience_missing");
    assert_eq!(code("wrong_recipient").await, "saml.recipient_mismatch");
    assert_eq!(code("wrong_destination").await, "saml.destination_mismatch");
    assert_eq!(
        code("signed_without_destination").await,
        "saml.destination_mismatch"
    );
    assert_eq!(code("wrong_issuer").await, "saml.issuer_mismatch");
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
    assert!(
        complete_xml(&c, Some(&pending(REQ)), xml("not_yet_valid").as_bytes())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn in_response_to_is_bound_to_the_pending_request() {
    assert_eq!(
        code("wrong_in_response_to").await,
        "saml.in_response_to_mismatch"
    );
    // A response without InResponseTo cannot complete a pending request.
    assert_eq!(code("unsolicited").await, "saml.in_response_to_mismatch");
    let c = sp().await;
    let r = complete_xml(&c, Some(&pending("_someone_else")), xml("ok").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.in_response_to_mismatch");
}

#[tokio::test]
async fn unsolicited_is_refused_unless_idp_initiated_is_on() {
    let c = sp().await;
    assert!(c_unsolicited_target_is_none(&c));
    let r = complete_xml(&c, None, xml("unsolicited").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.unsolicited_not_allowed");
    let (on, _) = sp_with(
        "acme",
        serde_json::json!({ "allow_idp_initiated": true,
        "default_client_id": "app", "redirect_uri": "https://app.example.test/cb" }),
    )
    .await;
    assert_eq!(
        portcullis::upstream::Connector::unsolicited_target(&on)
            .unwrap()
            .0,
        "app"
    );
    assert!(complete_xml(&on, None, xml("unsolicited").as_bytes())
        .await
        .is_ok());
    // ...but an unsolicited post that carries InResponseTo is refused.
    let r = complete_xml(&on, None, xml("ok").as_bytes()).await;
    assert_eq!(r.unwrap_err().code, "saml.unsolicited_in_response_to");
}

fn c_unsolicited_target_is_none(c: &SamlConnector) -> bool {
    portcullis::upstream::Connector::unsolicited_target(c).is_none()
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
    assert!(complete_xml(&c, Some(&pending(REQ)), x.as_bytes())
        .await
        .is_ok());
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(e.code, "saml.replay");
    // The replay record outlives the assertion: one second before NotOnOrAfter
    // + skew the assertion is still acceptable, and still refused as a replay.
    clock.set(now() + Duration::minutes(5) + Duration::seconds(59));
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes())
        .await
        .unwrap_err();
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
            tokio::spawn(
                async move { (i, complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await) },
            )
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

fn with_prolog(prolog: &str) -> String {
    format!("{prolog}{}", xml("ok"))
}

#[tokio::test]
async fn dtd_external_entity_and_entity_expansion_are_refused() {
    let c = sp().await;
    let xxe = with_prolog("<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>");
    let laughs = with_prolog(
        "<!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>",
    );
    let plain_dtd = with_prolog("<!DOCTYPE samlp:Response>");
    for x in [xxe, laughs, plain_dtd] {
        let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(e.code, "saml.dtd_forbidden");
    }
}

#[tokio::test]
async fn duplicate_ids_are_refused() {
    let x = xml("ok");
    let aid = attr_value(x.get(x.find("<saml:Assertion").unwrap()..).unwrap(), "ID").unwrap();
    let issuer_end = x.find("</saml:Issuer>").unwrap() + "</saml:Issuer>".len();
    let dup = format!(
        "{}<samlp:Extensions><saml:Foo xmlns:saml=\"urn:x\" ID=\"{aid}\"/></samlp:Extensions>{}",
        &x[..issuer_end],
        &x[issuer_end..]
    );
    let e = complete_xml(&sp().await, Some(&pending(REQ)), dup.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(e.code, "saml.duplicate_id");
}

#[tokio::test]
async fn oversized_and_malformed_input_is_refused() {
    let c = sp().await;
    let mut p = portcullis::upstream::CallbackParams::default();
    p.form.insert("SAMLResponse".into(), "A".repeat(300 * 1024));
    assert_eq!(c.complete_code(&p).await, "saml.too_large");
    p.form.insert("SAMLResponse".into(), "not base64!".into());
    assert_eq!(c.complete_code(&p).await, "saml.malformed");
    let e = complete_xml(&c, Some(&pending(REQ)), b"<samlp:Response")
        .await
        .unwrap_err();
    assert_eq!(e.code, "saml.malformed");
    let e = c
        .complete_code(&portcullis::upstream::CallbackParams::default())
        .await;
    assert_eq!(e, "saml.missing_response");
}

trait CompleteCode {
    async fn complete_code(&self, p: &portcullis::upstream::CallbackParams) -> &'static str;
}

impl CompleteCode for SamlConnector {
    async fn complete_code(&self, p: &portcullis::upstream::CallbackParams) -> &'static str {
        use portcullis::upstream::Connector;
        self.complete(Some(&pending(REQ)), p)
            .await
            .unwrap_err()
            .code
    }
}

/// Signatures must sit on the Response or the Assertion, reference exactly
/// their parent, and use only enveloped + canonicalization transforms.
#[tokio::test]
async fn signature_placement_reference_and_transforms_are_checked() {
    let c = sp().await;
    let x = xml("ok");
    let reject = |doc: String| {
        let c = &c;
        async move {
            complete_xml(c, Some(&pending(REQ)), doc.as_bytes())
                .await
                .unwrap_err()
        }
    };
    let xpath = x.replace(
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
    );
    let e = reject(xpath).await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("transform"), "{}", e.detail);

    let start = x.find("<ds:Reference URI=\"").unwrap() + "<ds:Reference URI=\"".len();
    let end = start + x[start..].find('"').unwrap();
    let whole_doc = format!("{}{}", &x[..start], &x[end..]);
    let e = reject(whole_doc).await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("does not reference"), "{}", e.detail);

    let s = x.find("<ds:Signature").unwrap();
    let t = x.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let sig = &x[s..t];
    let moved = format!("{}{}", &x[..s], &x[t..])
        .replace("</samlp:Status>", &format!("{sig}</samlp:Status>"));
    let e = reject(moved).await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("outside"), "{}", e.detail);
}
