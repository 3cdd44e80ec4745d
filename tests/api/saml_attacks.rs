//! One negative test per signature and structure defence of the ACS, with
//! responses signed by signxml (see saml_crafted), not by the code under test.

use crate::saml_common::*;
use crate::saml_crafted::*;
use portcullis::upstream::saml::SamlConnector;

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
    assert_eq!(run("ok_response_signed").await.unwrap().subject, "ada@example.test");
    assert_eq!(run("ok_both_signed").await.unwrap().subject, "ada@example.test");
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
    assert_eq!(code("tamper_signed_response").await, "saml.signature_invalid");
}

#[tokio::test]
async fn attacker_key_in_key_info_is_not_trusted() {
    let x = xml("attacker_key");
    assert!(x.contains("X509Certificate"), "the attacker ships its certificate");
    assert_eq!(code("attacker_key").await, "saml.signature_invalid");
}

/// The classic attack: a comment injected after signing. Exclusive c14n
/// ignores comments, so the signature alone still verifies; a comment inside
/// the signed element is never signed, so the response is refused
/// (`xml::has_unsigned_comment`), and a truncated `admin@corp.test` can never
/// come out. (That a comment never shortens a value we read is the unit test
/// `xml::tests::comment_does_not_truncate_text`; what is read after
/// verification is the signed canonical form, without the comment.)
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
    assert_eq!(code("sha1_digest").await, "saml.digest_algorithm_not_allowed");
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
        let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap_err();
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
    let e = c.complete_code(&portcullis::upstream::CallbackParams::default()).await;
    assert_eq!(e, "saml.missing_response");
}

trait CompleteCode {
    async fn complete_code(&self, p: &portcullis::upstream::CallbackParams) -> &'static str;
}

impl CompleteCode for SamlConnector {
    async fn complete_code(&self, p: &portcullis::upstream::CallbackParams) -> &'static str {
        use portcullis::upstream::Connector;
        self.complete(Some(&pending(REQ)), p).await.unwrap_err().code
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
        async move { complete_xml(c, Some(&pending(REQ)), doc.as_bytes()).await.unwrap_err() }
    };
    let xpath = x.replace(
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
    );
    let e = reject(xpath).await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("transform"), "{}", e.detail);

    // A chain of allowed transforms is refused before xmlsec runs any (it
    // would re-parse and canonicalize the signed element once per link).
    assert!(x.contains("</ds:Transforms>"), "{x}");
    for extra in [
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    ] {
        let chained = x.replacen(
            "</ds:Transforms>",
            &format!("<ds:Transform Algorithm=\"{extra}\"/></ds:Transforms>"),
            1,
        );
        let e = reject(chained).await;
        assert_eq!(e.code, "saml.signature_invalid", "{extra}");
        assert!(
            e.detail.contains("each once") && !e.detail.contains("xmlsec"),
            "{extra}: {}",
            e.detail
        );
    }

    let start = x.find("<ds:Reference URI=\"").unwrap() + "<ds:Reference URI=\"".len();
    let end = start + x[start..].find('"').unwrap();
    let whole_doc = format!("{}{}", &x[..start], &x[end..]);
    let e = reject(whole_doc).await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("does not reference"), "{}", e.detail);

    let s = x.find("<ds:Signature").unwrap();
    let t = x.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let sig = &x[s..t];
    let moved = format!("{}{}", &x[..s], &x[t..]).replace("</samlp:Status>", &format!("{sig}</samlp:Status>"));
    let e = reject(moved).await;
    assert_eq!(e.code, "saml.signature_invalid");
    assert!(e.detail.contains("outside"), "{}", e.detail);
}

/// Inclusive canonicalization (c14n 1.0 and 1.1) is a SHOULD NOT of SAML
/// Core 5.4.3-5.4.4, not a MUST, and no attack goes through it: the
/// Reference still resolves by ID to the element that is read, and the
/// digest covers it. It is signxml's default (c14n 1.1), so IdPs built on it
/// sign that way: such a Response, valid as signed, is accepted. (An
/// element signed inclusively apart from the document it is then put in
/// does not verify there, as its digest took in another namespace context.)
#[tokio::test]
async fn a_response_canonicalized_inclusively_as_signxml_signs_by_default_is_accepted() {
    for (name, alg) in [
        ("inclusive_c14n_response", "REC-xml-c14n-20010315"),
        ("c14n11_response", "xml-c14n11"),
    ] {
        assert!(xml(name).contains(alg), "{name}");
        let v = run(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {} {}", e.code, e.detail));
        assert_eq!(v.subject, "ada@example.test", "{name}");
    }
}

/// HMAC "signatures" are keyed with a shared secret, never an IdP's public
/// key: the method is outside every allow-list, whatever the connection opts into.
#[tokio::test]
async fn hmac_signature_method_is_refused() {
    let x = xml("ok");
    let rsa = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
    assert!(x.contains(rsa), "{x}");
    for hmac in [
        "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256",
        "http://www.w3.org/2000/09/xmldsig#hmac-sha1",
    ] {
        let (c, _) = sp_with(
            "acme",
            serde_json::json!({ "allowed_algorithms": ["rsa-sha256", "rsa-sha1"] }),
        )
        .await;
        let e = complete_xml(&c, Some(&pending(REQ)), x.replacen(rsa, hmac, 1).as_bytes())
            .await
            .unwrap_err();
        assert_eq!(e.code, "saml.signature_algorithm_not_allowed", "{hmac}");
    }
}

/// An EncryptedAssertion next to a signed plain one (either order) is two
/// assertions: refused before anything is decrypted or verified.
#[tokio::test]
async fn an_encrypted_assertion_next_to_a_plain_one_is_refused() {
    let x = xml("ok");
    let encrypted = "<saml:EncryptedAssertion><xenc:EncryptedData xmlns:xenc=\"http://www.w3.org/2001/04/xmlenc#\"/></saml:EncryptedAssertion>";
    let before = x.replacen("<saml:Assertion ", &format!("{encrypted}<saml:Assertion "), 1);
    let after = x.replacen("</samlp:Response>", &format!("{encrypted}</samlp:Response>"), 1);
    for doc in [before, after] {
        assert!(doc.contains(encrypted));
        let e = complete_xml(&sp().await, Some(&pending(REQ)), doc.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(e.code, "saml.assertion_count");
    }
}
