//! SAML ACS cost: validating a real captured, signed IdP response.
//!
//! `saml_complete/<vendor>` runs `SamlConnector::complete` end to end on a
//! vendor capture (`tests/fixtures/saml-vendors/assertions/*`): base64,
//! strict parse, placement and algorithm checks, xmlsec verification against
//! the metadata certificate in place in that one parse, every SAML condition,
//! attribute mapping, the blocking-pool hop and the replay-cache write.
//!
//! The replay cache would refuse the same assertion from the second iteration
//! on, so the connector's store is `ReplayFree` (`tests/api/support/replay_free.rs`): a `MemoryStore` whose
//! `put_if_absent` always writes (`put`) and reports "fresh". The cost of the
//! in-memory write is still paid; only the refusal is switched off. What is
//! measured is validation, not the replay cache.
//!
//! `saml_xmlsec_only/<vendor>` is the xmlsec step as the connector did it
//! before it loaded keys once and verified in place (`dsig.rs`): samael's
//! `reduce_xml_to_signed_with_allowed_algorithms` with `PreDigest`, the
//! certificate loaded per call, on the Assertion serialized as a document of
//! its own (untimed here). It is kept as the reference for
//! docs/PERFORMANCE.md. `saml_xmlsec_reduce_no_ancestors` is the same step
//! with the reduction used before that
//! (`ValidateAndMarkNoAncestors`: a fragment re-parse, pruning and a
//! re-serialization of the document on top).
//!
//! `saml_scaling/*` measures how `complete` grows with the number of
//! configured IdP certificates and with the size of the Response, on
//! Responses signed for the run by the load generator's test IdP
//! (`portcullis_load::saml_idp`, an RSA-2048 key, the Assertion signed):
//! `certs_1` and `certs_3` are the same Response with the signing
//! certificate configured alone or after two others (an EC one, which xmlsec
//! refuses for an RSA signature without computing anything, and another RSA
//! one, which would cost a failed verification; the signature's `KeyInfo`
//! names the signing certificate, so it is tried first); `size_<n>k` grow the Response to
//! about n KB through the user's e-mail address (NameID and attribute), so
//! the parse, canonicalization, digest and the reads of the signed bytes
//! all grow with it.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::store::memory::MemoryStore;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use portcullis::upstream::saml::{self, SamlConfig, SamlConnector, SignatureAlgorithm};
use portcullis::upstream::{CallbackParams, Connection, ConnectionKind, Connector, UpstreamContext};
use samael::crypto::{AllowedSignatureAlgorithm, CertificateDer, CryptoProvider as _, ReduceMode, XmlSec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VENDORS: [&str; 6] = ["adfs", "google", "jumpcloud", "keycloak", "okta", "ping"];

#[path = "../tests/api/support/replay_free.rs"]
mod replay_free;
use replay_free::{ReplayFree, ReplayWrites};

fn fixture(vendor: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/saml-vendors/assertions")
        .join(vendor)
}

/// Reads `name="value"` from the capture (first occurrence).
fn attr_value(doc: &str, name: &str) -> Option<String> {
    let start = doc.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = doc.get(start..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

struct Capture {
    connector: SamlConnector,
    cfg: SamlConfig,
    xml: String,
    params: CallbackParams,
    pending: Option<serde_json::Value>,
}

/// Configures a connection the way `tests/api/saml_vendors.rs` does: the
/// capture's metadata, its audience and ACS, the clock at its `now`.
async fn capture(vendor: &str) -> Capture {
    let dir = fixture(vendor);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("params.json")).unwrap()).unwrap();
    let now: DateTime<Utc> = meta["now"].as_str().unwrap().parse().unwrap();
    let clock: SharedClock = Arc::new(ManualClock::at(now));
    let ctx = UpstreamContext {
        // The Keycloak capture's endpoints are http on loopback, which the IdP URL
        // rule allows only when private networks are.
        http: OutboundHttp::new(OutboundConfig {
            allow_private_networks: true,
            ..OutboundConfig::default()
        })
        .unwrap(),
        clock: clock.clone(),
        store: Arc::new(ReplayFree(MemoryStore::new(clock), ReplayWrites::Kept)),
        public_url: url::Url::parse("https://sso.example.test/").unwrap(),
        clock_skew_secs: 60,
        // Through the blocking pool, as every earlier pass measured it.
        saml_in_place_bytes: 0,
    };
    let (tenant, conn_id) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("idp").unwrap());
    let xml = std::fs::read_to_string(dir.join("assertion.xml")).unwrap();
    let body = serde_json::json!({
        "metadata_xml": std::fs::read_to_string(dir.join("metadata.xml")).unwrap(),
        "allow_idp_initiated": true,
        "default_client_id": "app",
        "redirect_uri": "https://app.example.test/cb",
    });
    let mut cfg = saml::setup(body, &ctx, &tenant, &conn_id).await.unwrap();
    cfg.sp_entity_id = Some(meta["sp_entity_id"].as_str().unwrap().to_owned());
    cfg.acs_url = attr_value(&xml, "Recipient");
    let conn = Connection {
        id: conn_id,
        tenant,
        revision: 1,
        status: portcullis::upstream::ConnectionStatus::Active,
        disabled_by_platform: false,
        kind: ConnectionKind::Saml(cfg.clone()),
    };
    let connector = SamlConnector::new(&conn, cfg.clone(), ctx).unwrap();
    let mut params = CallbackParams::default();
    params.form.insert(
        "SAMLResponse".into(),
        base64::engine::general_purpose::STANDARD.encode(xml.as_bytes()),
    );
    // Captures answering a request bind its id; the others are IdP-initiated.
    let pending = attr_value(&xml, "InResponseTo").map(|id| serde_json::json!({ "request_id": id }));
    Capture {
        connector,
        cfg,
        xml,
        params,
        pending,
    }
}

const DS: &str = "http://www.w3.org/2000/09/xmldsig#";

fn is_signature(n: &libxml::tree::Node) -> bool {
    n.get_name() == "Signature" && n.get_namespace().is_some_and(|ns| ns.get_href() == DS)
}

/// The document xmlsec sees in the connector: with a signed Assertion, the
/// Assertion as a document of its own, carrying its ancestors' namespace
/// declarations (what `xml::standalone` did in `validate.rs` before).
fn xmlsec_input(xml: &str) -> String {
    let doc = libxml::parser::Parser::default().parse_string(xml).unwrap();
    let root = doc.get_root_element().unwrap();
    let signed = root
        .get_child_elements()
        .into_iter()
        .filter(|n| n.get_name() == "Assertion")
        .find(|a| a.get_child_elements().iter().any(is_signature));
    let Some(mut assertion) = signed else {
        return doc.to_string();
    };
    let mut seen: std::collections::HashSet<String> = assertion
        .get_namespace_declarations()
        .iter()
        .map(|ns| ns.get_prefix())
        .collect();
    let mut missing = Vec::new();
    let mut ancestor = assertion.get_parent();
    while let Some(a) = ancestor {
        for ns in a.get_namespace_declarations() {
            if seen.insert(ns.get_prefix()) && !ns.get_href().is_empty() {
                missing.push((ns.get_prefix(), ns.get_href()));
            }
        }
        ancestor = a.get_parent();
    }
    drop(root);
    for (prefix, href) in missing {
        libxml::tree::Namespace::new(&prefix, &href, &mut assertion).unwrap();
    }
    doc.node_to_string(&assertion)
}

fn bench_saml(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let captures: Vec<(&str, Capture)> = VENDORS.iter().map(|v| (*v, rt.block_on(capture(v)))).collect();

    let mut full = c.benchmark_group("saml_complete");
    for (vendor, cap) in &captures {
        // Prove the setup is right before timing it: a rejection would be measured otherwise.
        rt.block_on(cap.connector.complete(cap.pending.as_ref(), &cap.params))
            .unwrap_or_else(|e| panic!("{vendor} rejected: {e}"));
        full.bench_function(*vendor, |b| {
            b.iter(|| {
                rt.block_on(cap.connector.complete(cap.pending.as_ref(), &cap.params))
                    .unwrap()
            })
        });
    }
    full.finish();

    let allowed: Vec<AllowedSignatureAlgorithm> = SignatureAlgorithm::defaults()
        .iter()
        .filter_map(|a| match a {
            SignatureAlgorithm::RsaSha256 => Some(AllowedSignatureAlgorithm::RsaSha256),
            SignatureAlgorithm::RsaSha384 => Some(AllowedSignatureAlgorithm::RsaSha384),
            SignatureAlgorithm::RsaSha512 => Some(AllowedSignatureAlgorithm::RsaSha512),
            SignatureAlgorithm::EcdsaSha256 => Some(AllowedSignatureAlgorithm::EcdsaSha256),
            SignatureAlgorithm::EcdsaSha384 => Some(AllowedSignatureAlgorithm::EcdsaSha384),
            SignatureAlgorithm::EcdsaSha512 => Some(AllowedSignatureAlgorithm::EcdsaSha512),
            _ => None,
        })
        .collect();
    let mut sig = c.benchmark_group("saml_xmlsec_only");
    for (vendor, cap) in &captures {
        let certs: Vec<CertificateDer> = cap
            .cfg
            .idp_certificates
            .iter()
            .map(|b64| CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()))
            .collect();
        let input = xmlsec_input(&cap.xml);
        let verify = || {
            XmlSec::reduce_xml_to_signed_with_allowed_algorithms(&input, &certs, ReduceMode::PreDigest, Some(&allowed))
        };
        verify().unwrap_or_else(|e| panic!("{vendor}: xmlsec refused: {e}"));
        sig.bench_function(*vendor, |b| b.iter(|| verify().unwrap()));
    }
    sig.finish();

    // The reduction the connector used before it switched to `PreDigest`,
    // kept as the reference for docs/PERFORMANCE.md.
    let mut old = c.benchmark_group("saml_xmlsec_reduce_no_ancestors");
    for (vendor, cap) in &captures {
        let certs: Vec<CertificateDer> = cap
            .cfg
            .idp_certificates
            .iter()
            .map(|b64| CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()))
            .collect();
        let input = xmlsec_input(&cap.xml);
        old.bench_function(*vendor, |b| {
            b.iter(|| {
                XmlSec::reduce_xml_to_signed_with_allowed_algorithms(
                    &input,
                    &certs,
                    ReduceMode::ValidateAndMarkNoAncestors,
                    Some(&allowed),
                )
                .unwrap()
            })
        });
    }
    old.finish();
}

/// A connector for the load generator's test IdP and an IdP-initiated
/// Response it signed now, with `extra_certs` other certificates configured
/// ahead of the signing one and an e-mail address of about `email_len` bytes.
async fn generated(extra_certs: usize, email_len: usize) -> (SamlConnector, CallbackParams, usize) {
    use portcullis_load::saml_idp::{ResponseSpec, SamlIdp};
    #[allow(clippy::disallowed_methods)] // The test IdP stamps the real time; the clock follows it.
    let now = Utc::now();
    let clock: SharedClock = Arc::new(ManualClock::at(now));
    let ctx = UpstreamContext {
        http: OutboundHttp::new(OutboundConfig::default()).unwrap(),
        clock: clock.clone(),
        store: Arc::new(ReplayFree(MemoryStore::new(clock), ReplayWrites::Kept)),
        public_url: url::Url::parse("https://sso.example.test/").unwrap(),
        clock_skew_secs: 60,
        // Through the blocking pool, as every earlier pass measured it.
        saml_in_place_bytes: 0,
    };
    let (tenant, conn_id) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("idp").unwrap());
    let idp = SamlIdp::generate("https://idp.example.test/metadata").unwrap();
    let body = serde_json::json!({
        "metadata_xml": idp.metadata("https://idp.example.test/sso"),
        "allow_idp_initiated": true,
        "default_client_id": "app",
        "redirect_uri": "https://app.example.test/cb",
    });
    let mut cfg = saml::setup(body, &ctx, &tenant, &conn_id).await.unwrap();
    let others = [other_certificate(true), other_certificate(false)];
    let mut certs: Vec<String> = others.iter().cycle().take(extra_certs).cloned().collect();
    certs.extend(cfg.idp_certificates.iter().cloned());
    cfg.idp_certificates = certs;
    let sp_entity_id = "https://sso.example.test/saml/acme/idp".to_owned();
    let acs = "https://sso.example.test/saml/acme/idp/acs".to_owned();
    cfg.sp_entity_id = Some(sp_entity_id.clone());
    cfg.acs_url = Some(acs.clone());
    let conn = Connection {
        id: conn_id,
        tenant,
        revision: 1,
        status: portcullis::upstream::ConnectionStatus::Active,
        disabled_by_platform: false,
        kind: ConnectionKind::Saml(cfg.clone()),
    };
    let connector = SamlConnector::new(&conn, cfg, ctx).unwrap();
    let email = format!("{}@example.test", "u".repeat(email_len.max(1)));
    let xml = idp
        .response(&ResponseSpec {
            acs_url: &acs,
            audience: &sp_entity_id,
            in_response_to: None,
            email: &email,
        })
        .unwrap();
    let mut params = CallbackParams::default();
    params.form.insert(
        "SAMLResponse".into(),
        base64::engine::general_purpose::STANDARD.encode(xml.as_bytes()),
    );
    (connector, params, xml.len())
}

/// A self-signed certificate (base64 DER) of a fresh EC P-256 or RSA-2048 key.
fn other_certificate(ec: bool) -> String {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, x509};
    let key = if ec {
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap()
    } else {
        PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
    };
    let mut b = x509::X509Builder::new().unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(365).unwrap()).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(b.build().to_der().unwrap())
}

fn bench_scaling(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("saml_scaling");
    let cases: [(&str, usize, usize); 5] = [
        ("certs_1", 0, 16),
        ("certs_3", 2, 16),
        ("size_16k", 0, 6_400),
        ("size_64k", 0, 30_400),
        ("size_160k", 0, 78_400),
    ];
    for (name, extra, email_len) in cases {
        // Signed right before its measurement: the clock is fixed at signing.
        let (connector, params, bytes) = rt.block_on(generated(extra, email_len));
        rt.block_on(connector.complete(None, &params))
            .unwrap_or_else(|e| panic!("{name} ({bytes} bytes) rejected: {e}"));
        eprintln!("saml_scaling/{name}: {bytes} bytes of XML");
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(connector.complete(None, &params)).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench_saml, bench_scaling
}
criterion_main!(benches);
