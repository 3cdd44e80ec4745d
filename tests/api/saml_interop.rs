//! Interop with a real pysaml2 IdP (`saml2.server.Server`, signing and
//! encrypting through the xmlsec1 binary): it reads our SP metadata and our
//! AuthnRequest, and what it answers must be accepted.

use crate::saml_common::*;
use base64::Engine as _;
use portcullis::clock::{Clock, SystemClock};
use portcullis::upstream::saml::{self, SamlConnector};
use portcullis::upstream::{BeginRequest, Connector, Identity, UpstreamError, UpstreamRedirect};

const IDP: &str = "https://idp.pysaml2.test/metadata";

struct Peer {
    connector: SamlConnector,
    sp_metadata: String,
    idp: serde_json::Value,
}

/// pysaml2 stamps responses with the real time, so these tests run at it.
async fn peer_setup(extra: serde_json::Value) -> Peer {
    let (ctx, _clock) = ctx_at(SystemClock.now());
    let keys = peer("craft.py", &serde_json::json!({ "idp": { "entity_id": IDP } }));
    let mut body = serde_json::json!({ "metadata_xml": keys["metadata"] });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let cfg = setup(&ctx, "acme", "pysaml2", body).await;
    let conn = connection("acme", "pysaml2", cfg.clone());
    let sp_metadata = saml::sp_metadata_xml(&conn, &cfg, &ctx).unwrap();
    let connector = SamlConnector::new(&conn, cfg, ctx).unwrap();
    Peer {
        connector,
        sp_metadata,
        idp: keys["idp"].clone(),
    }
}

async fn round_trip(p: &Peer, opts: serde_json::Value) -> (Result<Identity, UpstreamError>, String) {
    round_trip_with(p, opts, |x| x).await
}

/// Like `round_trip`, with the IdP's response rewritten by `mutate` in transit.
async fn round_trip_with(
    p: &Peer,
    opts: serde_json::Value,
    mutate: impl Fn(String) -> String,
) -> (Result<Identity, UpstreamError>, String) {
    let begin = p
        .connector
        .begin(BeginRequest {
            login_id: "login-123",
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        })
        .await
        .unwrap();
    let UpstreamRedirect::Redirect(url) = begin.redirect else {
        panic!("expected redirect binding")
    };
    let saml_request = url
        .query_pairs()
        .find(|(k, _)| k == "SAMLRequest")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let mut input = serde_json::json!({
        "sp_metadata": p.sp_metadata,
        "idp_entity_id": IDP,
        "key_pem": p.idp["key_pem"],
        "cert_pem": p.idp["cert_pem"],
        "saml_request": saml_request,
        "name_id": "ada@example.test",
        "identity": {
            "mail": ["ada@example.test"],
            "givenName": ["Ada"],
            "sn": ["Lovelace"],
            "displayName": ["Ada Lovelace"],
        },
    });
    for (k, v) in opts.as_object().unwrap() {
        input[k] = v.clone();
    }
    let out = peer("idp.py", &input);
    assert_eq!(
        out["request_id"], begin.state["request_id"],
        "pysaml2 read our request id"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let sent = String::from_utf8(b64.decode(out["saml_response"].as_str().unwrap()).unwrap()).unwrap();
    let mut params = portcullis::upstream::CallbackParams::default();
    params.form.insert("SAMLResponse".into(), b64.encode(mutate(sent)));
    params.form.insert("RelayState".into(), "login-123".into());
    assert_eq!(p.connector.login_id(&params), Some("login-123"));
    let xml = String::from_utf8(b64.decode(&params.form["SAMLResponse"]).unwrap()).unwrap();
    (p.connector.complete(Some(&begin.state), &params).await, xml)
}

fn assert_ada(id: &Identity) {
    assert_eq!(id.subject, "ada@example.test");
    // pysaml2 stamps AuthnInstant with the time it answered (the real clock).
    let auth_time = id.auth_time.expect("auth_time from AuthnInstant");
    assert!((SystemClock.unix() - auth_time).abs() <= 120, "auth_time {auth_time}");
    assert_eq!(id.email.as_deref(), Some("ada@example.test"));
    assert_eq!(id.given_name.as_deref(), Some("Ada"));
    assert_eq!(id.family_name.as_deref(), Some("Lovelace"));
    assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(id.amr, vec!["pwd"]);
}

#[tokio::test]
async fn pysaml2_signed_assertion_is_accepted() {
    let p = peer_setup(serde_json::json!({})).await;
    let (r, xml) = round_trip(&p, serde_json::json!({ "sign_assertion": true })).await;
    assert!(xml.matches("Signature>").count() >= 1);
    assert_ada(&r.unwrap());
}

#[tokio::test]
async fn pysaml2_signed_response_is_accepted() {
    let p = peer_setup(serde_json::json!({})).await;
    let (r, _) = round_trip(&p, serde_json::json!({ "sign_response": true })).await;
    assert_ada(&r.unwrap());
}

#[tokio::test]
async fn pysaml2_signed_response_and_assertion_is_accepted() {
    let p = peer_setup(serde_json::json!({})).await;
    let (r, _) = round_trip(&p, serde_json::json!({ "sign_response": true, "sign_assertion": true })).await;
    assert_ada(&r.unwrap());
}

#[tokio::test]
async fn pysaml2_unsigned_response_is_refused() {
    let p = peer_setup(serde_json::json!({})).await;
    let (r, _) = round_trip(&p, serde_json::json!({})).await;
    assert_eq!(r.unwrap_err().code, "saml.unsigned");
}

#[tokio::test]
async fn pysaml2_encrypted_assertion_aes_cbc_is_accepted() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, xml) = round_trip(
        &p,
        serde_json::json!({ "sign_response": true, "sign_assertion": true, "encrypt": true }),
    )
    .await;
    assert!(xml.contains("EncryptedAssertion"), "pysaml2 encrypted the assertion");
    assert!(xml.contains("rsa-oaep-mgf1p") && xml.contains("aes256-cbc"));
    assert_ada(&r.unwrap());
}

#[tokio::test]
async fn pysaml2_encrypted_assertion_aes_gcm_is_accepted() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, xml) = round_trip(
        &p,
        serde_json::json!({ "sign_assertion": true, "encrypt": true,
            "msg_enc": "http://www.w3.org/2009/xmlenc11#aes128-gcm" }),
    )
    .await;
    assert!(xml.contains("aes128-gcm"));
    assert_ada(&r.unwrap());
}

#[tokio::test]
async fn pysaml2_encrypted_with_rsa_1_5_is_refused() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, xml) = round_trip(
        &p,
        serde_json::json!({ "sign_response": true, "sign_assertion": true, "encrypt": true,
            "key_enc": "http://www.w3.org/2001/04/xmlenc#rsa-1_5" }),
    )
    .await;
    assert!(xml.contains("rsa-1_5"));
    assert_eq!(r.unwrap_err().code, "saml.key_transport_not_allowed");
}

#[tokio::test]
async fn plaintext_assertion_refused_when_encryption_wanted() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, _) = round_trip(&p, serde_json::json!({ "sign_assertion": true })).await;
    assert_eq!(r.unwrap_err().code, "saml.encryption_required");
}

#[tokio::test]
async fn pysaml2_rsa_sha1_is_refused_by_default() {
    let p = peer_setup(serde_json::json!({})).await;
    let (r, xml) = round_trip(
        &p,
        serde_json::json!({ "sign_assertion": true,
            "sign_alg": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            "digest_alg": "http://www.w3.org/2000/09/xmldsig#sha1" }),
    )
    .await;
    assert!(xml.contains("xmldsig#rsa-sha1"));
    assert_eq!(r.unwrap_err().code, "saml.signature_algorithm_not_allowed");
}

#[tokio::test]
async fn pysaml2_rsa_sha1_is_accepted_when_opted_in() {
    let p = peer_setup(serde_json::json!({ "allowed_algorithms": ["rsa-sha256", "rsa-sha1"] })).await;
    let (r, _) = round_trip(
        &p,
        serde_json::json!({ "sign_assertion": true,
            "sign_alg": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            "digest_alg": "http://www.w3.org/2000/09/xmldsig#sha1" }),
    )
    .await;
    assert_ada(&r.unwrap());
}

/// Encrypted assertion without its own signature: trusted only because the
/// signed Response covers the EncryptedAssertion.
#[tokio::test]
async fn pysaml2_encrypted_assertion_in_signed_response_is_accepted() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, xml) = round_trip(&p, serde_json::json!({ "sign_response": true, "encrypt": true })).await;
    assert!(xml.contains("EncryptedAssertion"));
    assert_ada(&r.unwrap());
}

/// Encrypted but signed by nobody: decrypting is not trusting. With no
/// signature over the ciphertext, every post-decryption failure shares one
/// code (no decryption oracle); the log detail names the cause.
#[tokio::test]
async fn pysaml2_encrypted_unsigned_assertion_is_refused() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, xml) = round_trip(&p, serde_json::json!({ "encrypt": true })).await;
    assert!(xml.contains("EncryptedAssertion"));
    let e = r.unwrap_err();
    assert_eq!(e.code, "saml.decryption_failed");
    assert!(e.detail.starts_with("saml.unsigned"), "{}", e.detail);
}

/// Flips one bit in the middle of the last CipherValue (the encrypted assertion body).
fn tamper_ciphertext(xml: String) -> String {
    let start = xml.rfind("CipherValue>").unwrap();
    let open = xml[..start].rfind("CipherValue>").unwrap() + "CipherValue>".len();
    let b64 = base64::engine::general_purpose::STANDARD;
    let value: String = xml[open..].split('<').next().unwrap().split_whitespace().collect();
    let mut bytes = b64.decode(&value).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let end = open + xml[open..].find('<').unwrap();
    format!("{}{}{}", &xml[..open], b64.encode(bytes), &xml[end..])
}

/// With a signed Response, the ciphertext is verified before it is decrypted.
#[tokio::test]
async fn tampered_ciphertext_in_signed_response_fails_the_signature() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, _) = round_trip_with(
        &p,
        serde_json::json!({ "sign_response": true, "encrypt": true }),
        tamper_ciphertext,
    )
    .await;
    assert_eq!(r.unwrap_err().code, "saml.signature_invalid");
}

/// Without one, a tampered CBC ciphertext gets the same code as every other
/// post-decryption failure (no padding/parse oracle).
#[tokio::test]
async fn tampered_ciphertext_without_response_signature_is_uniform() {
    let p = peer_setup(serde_json::json!({ "want_encrypted_assertions": true })).await;
    let (r, _) = round_trip_with(
        &p,
        serde_json::json!({ "sign_assertion": true, "encrypt": true }),
        tamper_ciphertext,
    )
    .await;
    assert_eq!(r.unwrap_err().code, "saml.decryption_failed");
}

// ---- SP key overlapping rotation against pysaml2 (issue 7) ----

/// The base64 DER of a PEM certificate.
fn cert_b64(pem: &str) -> String {
    let der = openssl::x509::X509::from_pem(pem.as_bytes()).unwrap().to_der().unwrap();
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[tokio::test]
async fn after_rotate_an_assertion_encrypted_to_the_new_sp_certificate_decrypts_and_after_retire_the_old_one_does_not()
{
    let (ctx, _clock) = ctx_at(SystemClock.now());
    let keys = peer("craft.py", &serde_json::json!({ "idp": { "entity_id": IDP } }));
    let body = serde_json::json!({ "metadata_xml": keys["metadata"], "want_encrypted_assertions": true });
    let mut cfg = setup(&ctx, "acme", "pysaml2", body).await;
    let conn = connection("acme", "pysaml2", cfg.clone());
    let old_metadata = saml::sp_metadata_xml(&conn, &cfg, &ctx).unwrap();
    let old_b64 = cert_b64(&cfg.sp_certificate_pem);

    saml::rotate_sp_key(&mut cfg, &conn, SystemClock.now()).await.unwrap();
    let conn = connection("acme", "pysaml2", cfg.clone());
    let published = saml::sp_metadata_xml(&conn, &cfg, &ctx).unwrap();
    let new_b64 = cert_b64(&cfg.sp_next_key.as_ref().unwrap().certificate_pem);
    assert!(published.contains(&old_b64) && published.contains(&new_b64));
    // The IdP encrypts to the new certificate only (as one that took up the
    // new metadata and prefers the newest key would).
    let to_new = published.replace(&old_b64, &new_b64);
    let p = Peer {
        connector: SamlConnector::new(&conn, cfg.clone(), ctx.clone()).unwrap(),
        sp_metadata: to_new.clone(),
        idp: keys["idp"].clone(),
    };
    let (r, xml) = round_trip(&p, serde_json::json!({ "sign_assertion": true, "encrypt": true })).await;
    assert!(xml.contains("EncryptedAssertion"));
    assert_ada(&r.unwrap());
    // ...and to the old one, still current for signing.
    let p = Peer {
        sp_metadata: old_metadata.clone(),
        ..p
    };
    let (r, _) = round_trip(&p, serde_json::json!({ "sign_assertion": true, "encrypt": true })).await;
    assert_ada(&r.unwrap());

    // Activated: both still decrypt.
    saml::activate_sp_key(&mut cfg, SystemClock.now()).unwrap();
    let conn = connection("acme", "pysaml2", cfg.clone());
    for md in [&old_metadata, &to_new] {
        let p = Peer {
            connector: SamlConnector::new(&conn, cfg.clone(), ctx.clone()).unwrap(),
            sp_metadata: md.clone(),
            idp: keys["idp"].clone(),
        };
        let (r, _) = round_trip(&p, serde_json::json!({ "sign_assertion": true, "encrypt": true })).await;
        assert_ada(&r.unwrap());
    }

    // Retired: the old key no longer decrypts; the new one does.
    saml::retire_sp_key(&mut cfg).unwrap();
    let conn = connection("acme", "pysaml2", cfg.clone());
    let p = Peer {
        connector: SamlConnector::new(&conn, cfg.clone(), ctx.clone()).unwrap(),
        sp_metadata: old_metadata,
        idp: keys["idp"].clone(),
    };
    let (r, _) = round_trip(&p, serde_json::json!({ "sign_assertion": true, "encrypt": true })).await;
    assert_eq!(r.unwrap_err().code, "saml.decryption_failed");
    let p = Peer {
        sp_metadata: to_new,
        ..p
    };
    let (r, _) = round_trip(&p, serde_json::json!({ "sign_assertion": true, "encrypt": true })).await;
    assert_ada(&r.unwrap());
}

/// Verifies the HTTP-Redirect binding signature of `url` with `cert_pem`.
fn redirect_signature_verifies(url: &url::Url, cert_pem: &str) -> bool {
    let query = url.query().unwrap();
    let (signed, sig) = query.split_once("&Signature=").unwrap();
    let sig = url::form_urlencoded::parse(format!("s={sig}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.as_bytes())
        .unwrap();
    let key = openssl::x509::X509::from_pem(cert_pem.as_bytes())
        .unwrap()
        .public_key()
        .unwrap();
    let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    v.update(signed.as_bytes()).unwrap();
    v.verify(&sig).unwrap_or(false)
}

#[tokio::test]
async fn authn_requests_are_signed_with_the_new_sp_key_only_after_activate() {
    let (ctx, _clock) = ctx_at(SystemClock.now());
    let keys = peer("craft.py", &serde_json::json!({ "idp": { "entity_id": IDP } }));
    let body = serde_json::json!({ "metadata_xml": keys["metadata"], "sign_authn_requests": true });
    let mut cfg = setup(&ctx, "acme", "pysaml2", body).await;
    let old_pem = cfg.sp_certificate_pem.clone();
    let begin = |cfg: &saml::SamlConfig| {
        let conn = connection("acme", "pysaml2", cfg.clone());
        let connector = SamlConnector::new(&conn, cfg.clone(), ctx.clone()).unwrap();
        async move {
            let b = connector
                .begin(BeginRequest {
                    login_id: "login-1",
                    force_authn: false,
                    login_hint: None,
                    max_age: None,
                    require_mfa: false,
                })
                .await
                .unwrap();
            let UpstreamRedirect::Redirect(url) = b.redirect else {
                panic!("expected the redirect binding")
            };
            url
        }
    };
    let conn = connection("acme", "pysaml2", cfg.clone());
    saml::rotate_sp_key(&mut cfg, &conn, SystemClock.now()).await.unwrap();
    let new_pem = cfg.sp_next_key.as_ref().unwrap().certificate_pem.clone();
    let url = begin(&cfg).await;
    assert!(
        redirect_signature_verifies(&url, &old_pem),
        "still signed with the current key"
    );
    assert!(!redirect_signature_verifies(&url, &new_pem));

    saml::activate_sp_key(&mut cfg, SystemClock.now()).unwrap();
    let url = begin(&cfg).await;
    assert!(
        redirect_signature_verifies(&url, &new_pem),
        "signed with the new key after activate"
    );
    assert!(!redirect_signature_verifies(&url, &old_pem));
}
