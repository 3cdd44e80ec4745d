//! Responses crafted and signed by signxml (tests/peers/saml/craft.py), not
//! by the code under test; shared by the ACS test modules.

use crate::saml_common::*;
use chrono::{DateTime, Duration, Utc};
use portcullis::upstream::saml::SamlConnector;
use portcullis::upstream::{Identity, UpstreamContext, UpstreamError};
use std::sync::OnceLock;

pub const IDP: &str = "https://idp.craft.test/entity";
pub const REQ: &str = "_req1";
/// Distinct valid responses completed at once in the concurrency test.
pub const MANY: usize = 48;

pub fn now() -> DateTime<Utc> {
    "2030-01-01T12:00:00Z".parse().unwrap()
}

pub fn ts(d: Duration) -> String {
    (now() + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn sp_entity(tenant: &str) -> String {
    format!("https://sso.example.test/saml/{tenant}/corp/metadata")
}

pub fn acs(tenant: &str) -> String {
    format!("https://sso.example.test/saml/{tenant}/corp/acs")
}

/// A valid case for tenant `acme`, with `over` fields replaced.
pub fn case(name: &str, over: serde_json::Value) -> serde_json::Value {
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

/// Issuer `Format`s: the only one an Issuer of an IdP may carry (SAML
/// Profiles 4.1.4.2), and two it may not.
const ENTITY: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity";
const PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";
const EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";

pub fn cases() -> Vec<serde_json::Value> {
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
        case("wrong_audience", json!({ "audience": "https://sp.elsewhere.test" })),
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
        case("wrong_issuer", json!({ "assertion_issuer": "https://idp.evil.test" })),
        case(
            "issuer_format_entity",
            json!({ "sign": "both", "issuer_format": ENTITY, "response_issuer_format": ENTITY }),
        ),
        case("issuer_format_persistent", json!({ "issuer_format": PERSISTENT })),
        case(
            "response_issuer_format_email",
            json!({ "response_issuer_format": EMAIL }),
        ),
        case(
            "signed_response_without_issuer",
            json!({ "sign": "response", "response_issuer": null }),
        ),
        case("unsigned_response_without_issuer", json!({ "response_issuer": null })),
        case(
            "no_bearer_confirmation",
            json!({ "confirmations": [
                "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key",
                "urn:oasis:names:tc:SAML:2.0:cm:sender-vouches"] }),
        ),
        case(
            "inclusive_c14n_response",
            json!({ "sign": "response", "c14n": "http://www.w3.org/TR/2001/REC-xml-c14n-20010315" }),
        ),
        case(
            "c14n11_response",
            json!({ "sign": "response", "c14n": "http://www.w3.org/2006/12/xml-c14n11" }),
        ),
        case("expired", json!({ "not_on_or_after": ts(Duration::minutes(-2)) })),
        case("not_yet_valid", json!({ "not_before": ts(Duration::minutes(3)) })),
        case(
            "scd_expired",
            json!({ "scd_not_on_or_after": ts(Duration::minutes(-2)) }),
        ),
        case("no_scd_not_on_or_after", json!({ "scd_not_on_or_after": null })),
        case("wrong_in_response_to", json!({ "in_response_to": "_other" })),
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
    v.extend(trust_cases());
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

/// The cases of `saml_trust`: look-alike attributes, conditions, transient
/// NameIDs, issue and authentication instants.
fn trust_cases() -> Vec<serde_json::Value> {
    use serde_json::json;
    const TRANSIENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient";
    let conditions = |x: &[&str]| json!({ "conditions_xml": x });
    vec![
        case("lookalike_status", json!({ "lookalike": "status" })),
        case(
            "name_id_no_break_space",
            json!({ "name_id": "ada@example.test\u{a0}", "name_id_format": PERSISTENT }),
        ),
        case(
            "name_id_ideographic_space",
            json!({ "name_id": "\u{3000}ada@example.test", "name_id_format": PERSISTENT }),
        ),
        case(
            "name_id_pretty_printed",
            json!({ "name_id": "\n    ada@example.test\n  ", "name_id_format": PERSISTENT }),
        ),
        case("lookalike_version", json!({ "lookalike": "version" })),
        case(
            "condition_xsi_type",
            conditions(&["<saml:Condition xmlns:x=\"urn:x\" xsi:type=\"x:Delegation\"/>"]),
        ),
        case("condition_foreign", conditions(&["<x:Anything xmlns:x=\"urn:x\"/>"])),
        case("condition_one_time_use", conditions(&["<saml:OneTimeUse/>"])),
        case(
            "condition_one_time_use_twice",
            conditions(&["<saml:OneTimeUse/>", "<saml:OneTimeUse/>"]),
        ),
        case(
            "condition_proxy_restriction",
            conditions(&["<saml:ProxyRestriction Count=\"0\"/>"]),
        ),
        case(
            "transient_without_stable_attribute",
            json!({ "name_id_format": TRANSIENT, "name_id": "_tr0f1e2d3c",
                    "attributes": { "firstName": ["Ada"] } }),
        ),
        case(
            "transient_with_eppn",
            json!({ "name_id_format": TRANSIENT, "name_id": "_tr9a8b7c6d",
                    "attributes": { "urn:oid:1.3.6.1.4.1.5923.1.1.1.6": ["ada@uni.test"],
                                    "email": ["ada.lovelace@uni.test"] } }),
        ),
        case(
            "transient_with_employee_id",
            json!({ "name_id_format": TRANSIENT, "name_id": "_tr11",
                    "attributes": { "employeeId": ["E-42"], "uid": ["ada"] } }),
        ),
        case(
            "response_issued_in_future",
            json!({ "sign": "both", "response_issue_instant": ts(Duration::minutes(3)) }),
        ),
        case(
            "response_issued_long_ago",
            json!({ "sign": "both", "response_issue_instant": ts(Duration::minutes(-10)) }),
        ),
        case(
            "assertion_issued_in_future",
            json!({ "assertion_issue_instant": ts(Duration::minutes(3)) }),
        ),
        case(
            "assertion_issued_long_ago",
            json!({ "assertion_issue_instant": ts(Duration::minutes(-10)) }),
        ),
        case(
            "authn_instant_in_future",
            json!({ "authn_instant": ts(Duration::minutes(3)) }),
        ),
        case(
            "authn_instant_in_year_zero",
            json!({ "authn_instant": "0000-01-01T00:00:00Z" }),
        ),
        case(
            "authn_instant_before_epoch",
            json!({ "authn_instant": "1969-12-31T23:59:59Z" }),
        ),
        case(
            "authn_instant_at_epoch",
            json!({ "authn_instant": "1970-01-01T00:00:00Z" }),
        ),
        case(
            "authn_earlier_with_session_end",
            json!({ "authn_instant": ts(Duration::minutes(-30)),
                    "session_not_on_or_after": ts(Duration::hours(8)) }),
        ),
        // Instants at the edges: other time zones, long fractions, the first
        // and last years a four-digit year holds, and forms RFC 3339 lacks.
        case(
            "instant_in_another_zone",
            json!({ "issue_instant": "2030-01-01T13:00:00+01:00",
                    "not_on_or_after": "2030-01-01T07:05:00-05:00" }),
        ),
        case(
            "issued_in_future_by_zone",
            json!({ "issue_instant": "2030-01-01T07:10:00-05:00" }),
        ),
        case(
            "instant_with_thirty_fraction_digits",
            json!({ "issue_instant": "2030-01-01T12:00:00.123456789012345678901234567890Z" }),
        ),
        case(
            "issued_in_year_zero",
            json!({ "issue_instant": "0000-01-01T00:00:00Z" }),
        ),
        case(
            "issued_in_year_9999",
            json!({ "issue_instant": "9999-12-31T23:59:59Z" }),
        ),
        case(
            "expired_in_year_zero",
            json!({ "not_on_or_after": "0000-01-01T00:00:00Z" }),
        ),
        case(
            "valid_until_year_9999",
            json!({ "not_before": "0000-01-01T00:00:00Z",
                    "not_on_or_after": "9999-12-31T23:59:59.999999999Z",
                    "scd_not_on_or_after": "9999-12-31T23:59:59Z",
                    "session_not_on_or_after": "9999-12-31T23:59:59Z" }),
        ),
        case(
            "instant_without_zone",
            json!({ "issue_instant": "2030-01-01T12:00:00" }),
        ),
        case(
            "instant_with_five_digit_year",
            json!({ "issue_instant": "+12030-01-01T12:00:00Z" }),
        ),
        case(
            "instant_with_negative_year",
            json!({ "issue_instant": "-0001-01-01T00:00:00Z" }),
        ),
        case(
            "instant_with_offset_of_a_day",
            json!({ "issue_instant": "2030-01-01T12:00:00+24:00" }),
        ),
        case("instant_as_unix_seconds", json!({ "issue_instant": "1893499200" })),
    ]
}

pub struct Crafted {
    pub metadata: String,
    pub responses: serde_json::Value,
}

/// All crafted responses, made once per test run (one Python start).
pub fn crafted() -> &'static Crafted {
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

pub fn xml(name: &str) -> String {
    crafted().responses[name].as_str().unwrap().to_owned()
}

pub async fn sp_with(tenant: &str, extra: serde_json::Value) -> (SamlConnector, UpstreamContext) {
    let (ctx, _) = ctx_at(now());
    let mut body = serde_json::json!({ "metadata_xml": crafted().metadata });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let cfg = setup(&ctx, tenant, "corp", body).await;
    (connector(&ctx, tenant, "corp", cfg), ctx)
}

pub async fn sp() -> SamlConnector {
    sp_with("acme", serde_json::json!({})).await.0
}

pub async fn run(name: &str) -> Result<Identity, UpstreamError> {
    complete_xml(&sp().await, Some(&pending(REQ)), xml(name).as_bytes()).await
}

pub async fn code(name: &str) -> &'static str {
    match run(name).await {
        Ok(id) => panic!("{name} was accepted as {}", id.subject),
        Err(e) => e.code,
    }
}
