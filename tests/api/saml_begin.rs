//! The AuthnRequest: HTTP-Redirect (plain and signed) and HTTP-POST
//! (enveloped-signed, checked by the xmlsec1 tool) bindings.

use crate::saml_common::*;
use base64::Engine as _;
use portcullis::upstream::saml::SamlConfig;
use portcullis::upstream::{BeginRequest, Connector, SetupError, UpstreamContext, UpstreamRedirect};
use std::io::Read as _;

fn okta_metadata() -> String {
    std::fs::read_to_string(fixtures().join("assertions/okta/metadata.xml")).unwrap()
}

fn ctx() -> UpstreamContext {
    ctx_at("2030-01-01T00:00:00Z".parse().unwrap()).0
}

async fn try_setup(ctx: &UpstreamContext, body: serde_json::Value) -> Result<SamlConfig, SetupError> {
    portcullis::upstream::saml::setup(
        body,
        ctx,
        &portcullis::ids::TenantId::parse("acme").unwrap(),
        &portcullis::ids::ConnectionId::parse("corp").unwrap(),
    )
    .await
}

fn inflate(b64: &str) -> String {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let mut s = String::new();
    flate2::read::DeflateDecoder::new(&raw[..])
        .read_to_string(&mut s)
        .unwrap();
    s
}

#[tokio::test]
async fn begin_redirect_binding_unsigned_and_signed() {
    let ctx = ctx();
    for sign in [false, true] {
        let cfg = try_setup(
            &ctx,
            serde_json::json!({ "metadata_xml": okta_metadata(), "sign_authn_requests": sign }),
        )
        .await
        .unwrap();
        let c = connector(&ctx, "acme", "corp", cfg.clone());
        let b = c
            .begin(BeginRequest {
                login_id: "L-1",
                force_authn: true,
                login_hint: None,
                max_age: None,
                require_mfa: false,
            })
            .await
            .unwrap();
        let UpstreamRedirect::Redirect(url) = b.redirect else {
            panic!("redirect expected")
        };
        assert!(url.as_str().starts_with(cfg.sso_redirect_url.as_deref().unwrap()));
        let q: std::collections::BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["RelayState"], "L-1");
        let xml = inflate(&q["SAMLRequest"]);
        let id = b.state["request_id"].as_str().unwrap();
        assert!(id.starts_with('_') && id.len() > 30);
        assert!(xml.contains(&format!("ID=\"{id}\"")));
        assert!(xml.contains("<saml:Issuer>https://sso.example.test/saml/acme/corp/metadata</saml:Issuer>"));
        assert!(xml.contains(&format!("Destination=\"{}\"", cfg.sso_redirect_url.as_deref().unwrap())));
        assert!(xml.contains("AssertionConsumerServiceURL=\"https://sso.example.test/saml/acme/corp/acs\""));
        assert!(xml.contains("ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\""));
        assert!(xml.contains("ForceAuthn=\"true\""));
        assert!(
            !xml.contains("Signature"),
            "redirect binding signs the query, not the XML"
        );
        if sign {
            assert_eq!(q["SigAlg"], "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256");
            // Verify over the exact query bytes, as the IdP does.
            let query = url.query().unwrap();
            let signed = &query[..query.find("&Signature=").unwrap()];
            let sig = base64::engine::general_purpose::STANDARD
                .decode(&q["Signature"])
                .unwrap();
            let cert = openssl::x509::X509::from_pem(cfg.sp_certificate_pem.as_bytes()).unwrap();
            let key = cert.public_key().unwrap();
            let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            v.update(signed.as_bytes()).unwrap();
            assert!(v.verify(&sig).unwrap());
        } else {
            assert!(!q.contains_key("Signature"));
        }
        // Fresh id each time.
        let b2 = c
            .begin(BeginRequest {
                login_id: "L-1",
                force_authn: false,
                login_hint: None,
                max_age: None,
                require_mfa: false,
            })
            .await
            .unwrap();
        assert_ne!(b2.state["request_id"], b.state["request_id"]);
    }
}

/// JumpCloud's metadata offers only HTTP-POST: the request is an
/// enveloped-signed form, checked here by the xmlsec1 command-line tool.
#[tokio::test]
async fn begin_post_binding_is_enveloped_signed() {
    // Before the captured certificate expires (November 2028): metadata
    // whose certificates have all expired is refused.
    let ctx = ctx_at("2027-01-01T00:00:00Z".parse().unwrap()).0;
    let md = std::fs::read_to_string(fixtures().join("assertions/jumpcloud/metadata.xml")).unwrap();
    let cfg = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": md, "sign_authn_requests": true }),
    )
    .await
    .unwrap();
    assert!(cfg.sso_redirect_url.is_none());
    let c = connector(&ctx, "acme", "corp", cfg.clone());
    let b = c
        .begin(BeginRequest {
            login_id: "L-2",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::PostForm { action, fields } = b.redirect else {
        panic!("post form expected")
    };
    assert_eq!(action.as_str(), cfg.sso_post_url.as_deref().unwrap());
    let f: std::collections::BTreeMap<_, _> = fields.into_iter().collect();
    assert_eq!(f["RelayState"], "L-2");
    let xml = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&f["SAMLRequest"])
            .unwrap(),
    )
    .unwrap();
    assert!(xml.contains(&format!("ID=\"{}\"", b.state["request_id"].as_str().unwrap())));
    assert!(!xml.contains("ForceAuthn"));
    let dir = std::env::temp_dir().join(format!("portcullis-saml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("req.xml"), &xml).unwrap();
    std::fs::write(dir.join("sp.pem"), &cfg.sp_certificate_pem).unwrap();
    let out = std::process::Command::new("xmlsec1")
        .args(["--verify", "--pubkey-cert-pem"])
        .arg(dir.join("sp.pem"))
        .args(["--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:protocol:AuthnRequest"])
        .arg(dir.join("req.xml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "xmlsec1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn idp_wanting_signed_requests_gets_them() {
    let ctx = ctx();
    let md = okta_metadata().replace("WantAuthnRequestsSigned=\"false\"", "WantAuthnRequestsSigned=\"true\"");
    let cfg = try_setup(&ctx, serde_json::json!({ "metadata_xml": md }))
        .await
        .unwrap();
    assert!(cfg.want_authn_requests_signed);
    let c = connector(&ctx, "acme", "corp", cfg);
    let b = c
        .begin(BeginRequest {
            login_id: "L",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = b.redirect else {
        panic!()
    };
    assert!(url.query_pairs().any(|(k, _)| k == "Signature"));
}

/// Google's SSO URL carries its own query (`?idpid=`): ours is appended and
/// the signature covers exactly SAMLRequest, RelayState and SigAlg.
#[tokio::test]
async fn begin_keeps_the_idp_query_and_signs_only_ours() {
    // Before the captured certificate expires (July 2028).
    let ctx = ctx_at("2027-01-01T00:00:00Z".parse().unwrap()).0;
    let md = std::fs::read_to_string(fixtures().join("assertions/google/metadata.xml")).unwrap();
    let cfg = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": md, "sign_authn_requests": true }),
    )
    .await
    .unwrap();
    let c = connector(&ctx, "acme", "corp", cfg.clone());
    let b = c
        .begin(BeginRequest {
            login_id: "L-3",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = b.redirect else {
        panic!("redirect expected")
    };
    assert!(url
        .as_str()
        .starts_with("https://accounts.google.com/o/saml2/idp?idpid=C029op2ga&SAMLRequest="));
    let query = url.query().unwrap();
    let signed = &query[query.find("SAMLRequest=").unwrap()..query.find("&Signature=").unwrap()];
    let sig: String = url
        .query_pairs()
        .find(|(k, _)| k == "Signature")
        .unwrap()
        .1
        .into_owned();
    let sig = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
    let cert = openssl::x509::X509::from_pem(cfg.sp_certificate_pem.as_bytes()).unwrap();
    let key = cert.public_key().unwrap();
    let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    v.update(signed.as_bytes()).unwrap();
    assert!(v.verify(&sig).unwrap());
}
