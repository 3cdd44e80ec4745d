//! Connection setup (metadata, keys, options, rotation) and SP metadata.

use crate::saml_common::*;
use base64::Engine as _;
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::upstream::saml::{self, SamlConfig};
use portcullis::upstream::{SetupError, UpstreamContext};

fn okta_metadata() -> String {
    std::fs::read_to_string(fixtures().join("assertions/okta/metadata.xml")).unwrap()
}

fn ctx() -> UpstreamContext {
    ctx_at("2030-01-01T00:00:00Z".parse().unwrap()).0
}

async fn try_setup(ctx: &UpstreamContext, body: serde_json::Value) -> Result<SamlConfig, SetupError> {
    saml::setup(
        body,
        ctx,
        &TenantId::parse("acme").unwrap(),
        &ConnectionId::parse("corp").unwrap(),
    )
    .await
}

#[tokio::test]
async fn setup_reads_metadata_and_generates_sp_keys() {
    let ctx = ctx();
    let cfg = try_setup(&ctx, serde_json::json!({ "metadata_xml": okta_metadata() }))
        .await
        .unwrap();
    assert_eq!(cfg.idp_entity_id, "http://www.okta.com/exkdoocxa1VmjpXmX697");
    assert_eq!(cfg.idp_certificates.len(), 1);
    assert!(cfg
        .sso_redirect_url
        .as_deref()
        .unwrap()
        .starts_with("https://trial-1022863.okta.com/"));
    assert!(cfg.sso_post_url.is_some());
    assert!(!cfg.want_authn_requests_signed);
    assert!(cfg.sp_private_key_pem.expose().contains("BEGIN PRIVATE KEY"));
    assert_eq!(format!("{:?}", cfg.sp_private_key_pem), "[redacted]");
    let key = openssl::pkey::PKey::private_key_from_pem(cfg.sp_private_key_pem.expose().as_bytes()).unwrap();
    assert_eq!(key.bits(), 2048);
    let cert = openssl::x509::X509::from_pem(cfg.sp_certificate_pem.as_bytes()).unwrap();
    assert!(cert.public_key().unwrap().public_eq(&key));
    // Defaults: SHA-256 and stronger only, IdP-initiated off, derived URLs.
    let algs = serde_json::to_value(&cfg.allowed_algorithms).unwrap();
    assert!(!algs.as_array().unwrap().contains(&serde_json::json!("rsa-sha1")));
    assert!(!cfg.allow_idp_initiated && cfg.sp_entity_id.is_none() && cfg.acs_url.is_none());
    // The stored JSON round-trips, alone and inside a Connection.
    let json = serde_json::to_value(&cfg).unwrap();
    let back: SamlConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back.idp_certificates, cfg.idp_certificates);
    let conn = serde_json::to_string(&connection("acme", "corp", cfg.clone())).unwrap();
    let back: portcullis::upstream::Connection = serde_json::from_str(&conn).unwrap();
    let portcullis::upstream::ConnectionKind::Saml(back) = back.kind else {
        panic!("saml kind")
    };
    assert_eq!(back.sp_certificate_pem, cfg.sp_certificate_pem);
    assert_eq!(back.sp_private_key_pem, cfg.sp_private_key_pem);
}

#[tokio::test]
async fn setup_refuses_bad_requests() {
    let ctx = ctx();
    let no_cert = okta_metadata();
    let start = no_cert.find("<md:KeyDescriptor").unwrap();
    let end = no_cert.find("</md:KeyDescriptor>").unwrap() + "</md:KeyDescriptor>".len();
    let no_cert = format!("{}{}", &no_cert[..start], &no_cert[end..]);
    let e = try_setup(&ctx, serde_json::json!({ "metadata_xml": no_cert }))
        .await
        .unwrap_err();
    assert_eq!(e.field, "metadata_xml");
    assert!(e.message.contains("signing certificate"), "{}", e.message);

    let dtd = format!(
        "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{}",
        okta_metadata().trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
    );
    let e = try_setup(&ctx, serde_json::json!({ "metadata_xml": dtd }))
        .await
        .unwrap_err();
    assert_eq!(e.field, "metadata_xml");

    let e = try_setup(&ctx, serde_json::json!({ "metadata_xml": okta_metadata(), "bogus": 1 }))
        .await
        .unwrap_err();
    assert_eq!(e.field, "bogus");
    let e = try_setup(&ctx, serde_json::json!({})).await.unwrap_err();
    assert_eq!(e.field, "metadata_xml");
    let e = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": okta_metadata(), "allow_idp_initiated": true }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "default_client_id");
    let e = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": okta_metadata(), "clock_skew_secs": 301 }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "clock_skew_secs");
    let e = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": okta_metadata(), "allowed_algorithms": ["rsa-sha256", "md5"] }),
    )
    .await
    .unwrap_err();
    // The exact path of the bad element (serde_path_to_error).
    assert_eq!(e.field, "allowed_algorithms[1]");
    let e = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": okta_metadata(), "attribute_mapping": { "email": 7 } }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "attribute_mapping.email");
    let e = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": okta_metadata(), "allowed_algorithms": [] }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "allowed_algorithms");
    let sp_md = "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" entityID=\"x\"><md:SPSSODescriptor/></md:EntityDescriptor>";
    let e = try_setup(&ctx, serde_json::json!({ "metadata_xml": sp_md }))
        .await
        .unwrap_err();
    assert!(e.message.contains("IDPSSODescriptor"));
}

#[tokio::test]
async fn setup_fetches_metadata_url() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = okta_metadata();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await.unwrap();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            body.len(),
            body
        );
        s.write_all(resp.as_bytes()).await.unwrap();
    });
    let (mut ctx, _) = ctx_at("2030-01-01T00:00:00Z".parse().unwrap());
    ctx.http = portcullis::upstream::http::OutboundHttp::new(portcullis::upstream::http::OutboundConfig {
        allow_private_networks: true,
        ..Default::default()
    })
    .unwrap();
    let url = format!("http://{addr}/metadata");
    let cfg = try_setup(&ctx, serde_json::json!({ "metadata_url": url }))
        .await
        .unwrap();
    assert_eq!(cfg.idp_entity_id, "http://www.okta.com/exkdoocxa1VmjpXmX697");
    assert_eq!(cfg.metadata_url.unwrap().as_str(), url);
}

#[tokio::test]
async fn rotated_certificates_are_all_kept_and_accepted() {
    use chrono::Duration;
    let now: chrono::DateTime<chrono::Utc> = "2030-01-01T12:00:00Z".parse().unwrap();
    let ts = |d: Duration| (now + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let idp = "https://idp.rotate.test";
    let case = serde_json::json!({ "name": "r", "sp_entity_id": "https://sso.example.test/saml/acme/corp/metadata",
        "acs_url": "https://sso.example.test/saml/acme/corp/acs", "name_id": "rot@example.test",
        "issue_instant": ts(Duration::zero()), "not_before": ts(Duration::minutes(-1)),
        "not_on_or_after": ts(Duration::minutes(5)), "scd_not_on_or_after": ts(Duration::minutes(5)) });
    let old = peer(
        "craft.py",
        &serde_json::json!({ "idp": { "entity_id": idp }, "cases": [case] }),
    );
    let new = peer(
        "craft.py",
        &serde_json::json!({ "idp": { "entity_id": idp }, "cases": [case] }),
    );
    let cert = |o: &serde_json::Value| {
        o["idp"]["cert_pem"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.contains("CERTIFICATE"))
            .collect::<String>()
    };
    let kd = |c: String| {
        format!("<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{c}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>")
    };
    let md = format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" entityID=\"{idp}\"><md:IDPSSODescriptor protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">{}{}<md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"https://idp.rotate.test/sso\"/></md:IDPSSODescriptor></md:EntityDescriptor>",
        kd(cert(&old)),
        kd(cert(&new))
    );
    let (ctx, _) = ctx_at(now);
    let cfg = setup(
        &ctx,
        "acme",
        "corp",
        serde_json::json!({ "metadata_xml": md, "allow_idp_initiated": true,
        "default_client_id": "app", "redirect_uri": "https://app.example.test/cb" }),
    )
    .await;
    assert_eq!(cfg.idp_certificates.len(), 2);
    let c = connector(&ctx, "acme", "corp", cfg);
    for o in [&old, &new] {
        let id = complete_xml(&c, None, o["responses"]["r"].as_str().unwrap().as_bytes())
            .await
            .unwrap();
        assert_eq!(id.subject, "rot@example.test");
    }
}

#[tokio::test]
async fn sp_metadata_names_this_connection() {
    let ctx = ctx();
    let cfg = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": okta_metadata(), "sign_authn_requests": true }),
    )
    .await
    .unwrap();
    let conn = connection("acme", "corp", cfg.clone());
    let md = saml::sp_metadata_xml(&conn, &cfg, &ctx).unwrap();
    assert_eq!(
        saml::sp_entity_id(&ctx, &conn).as_str(),
        "https://sso.example.test/saml/acme/corp/metadata"
    );
    assert_eq!(
        saml::acs_url(&ctx, &conn).as_str(),
        "https://sso.example.test/saml/acme/corp/acs"
    );
    assert!(md.contains("entityID=\"https://sso.example.test/saml/acme/corp/metadata\""));
    assert!(md.contains("Location=\"https://sso.example.test/saml/acme/corp/acs\""));
    assert!(md.contains("AuthnRequestsSigned=\"true\"") && md.contains("WantAssertionsSigned=\"true\""));
    assert!(md.contains("use=\"signing\"") && md.contains("use=\"encryption\""));
    let cert_b64: String = cfg
        .sp_certificate_pem
        .lines()
        .filter(|l| !l.contains("CERTIFICATE"))
        .collect();
    assert!(md.contains(&cert_b64));
}

#[tokio::test]
async fn federation_metadata_picks_the_named_idp() {
    // Before the captured PingOne certificate expired (November 2024):
    // metadata whose certificates have all expired is refused.
    let ctx = ctx_at("2024-06-01T00:00:00Z".parse().unwrap()).0;
    let okta = okta_metadata().replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "");
    let ping = std::fs::read_to_string(fixtures().join("assertions/ping/metadata.xml"))
        .unwrap()
        .replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "");
    let fed = format!(
        "<md:EntitiesDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\">{okta}{ping}</md:EntitiesDescriptor>"
    );
    let first = try_setup(&ctx, serde_json::json!({ "metadata_xml": fed }))
        .await
        .unwrap();
    assert_eq!(first.idp_entity_id, "http://www.okta.com/exkdoocxa1VmjpXmX697");
    let picked = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": fed,
        "idp_entity_id": "https://auth.pingone.com/3030059e-440b-4ad0-9217-44326f1757f6" }),
    )
    .await
    .unwrap();
    assert_eq!(
        picked.idp_entity_id,
        "https://auth.pingone.com/3030059e-440b-4ad0-9217-44326f1757f6"
    );
    let e = try_setup(
        &ctx,
        serde_json::json!({ "metadata_xml": fed, "idp_entity_id": "nope" }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "metadata_xml");
}

#[tokio::test]
async fn weak_idp_rsa_keys_are_refused() {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(1024).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "weak").unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::from_unix(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::from_unix(4_000_000_000).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
    let der = base64::engine::general_purpose::STANDARD.encode(b.build().to_der().unwrap());
    let md = format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" entityID=\"https://weak.test\"><md:IDPSSODescriptor protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\"><md:KeyDescriptor><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{der}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor><md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"https://weak.test/sso\"/></md:IDPSSODescriptor></md:EntityDescriptor>"
    );
    let e = try_setup(&ctx(), serde_json::json!({ "metadata_xml": md }))
        .await
        .unwrap_err();
    assert_eq!(e.field, "metadata_xml");
    assert!(e.message.contains("1024-bit"), "{}", e.message);
}

/// A self-signed-looking certificate carrying `public` (signed by a small
/// key of its own: the parser does not check a certificate's signature).
/// Set-up is open to tenant admins: what its error says about a metadata
/// URL's host must not tell a name that resolves to the gateway's private
/// network from one that does not resolve, or set-up maps the internal DNS.
/// Both read `outbound.no_public_address`, word for word apart from the host.
#[tokio::test]
async fn a_metadata_url_on_a_private_host_name_reads_like_one_that_does_not_resolve() {
    let ctx = ctx();
    let mut seen = Vec::new();
    for host in ["localhost", "portcullis-probe.invalid"] {
        let e = try_setup(
            &ctx,
            serde_json::json!({ "metadata_url": format!("https://{host}/metadata") }),
        )
        .await
        .unwrap_err();
        assert_eq!(e.field, "metadata_url", "{host}");
        assert!(
            e.message.contains("outbound.no_public_address"),
            "{host}: {}",
            e.message
        );
        seen.push(e.message.replace(host, "HOST"));
    }
    assert_eq!(seen[0], seen[1]);
}

fn cert_with_key(cn: &str, public: &openssl::pkey::PKeyRef<openssl::pkey::Public>) -> String {
    cert_until(cn, public, 4_000_000_000)
}

/// A certificate for `public` valid from 1970 until `not_after` (Unix seconds).
fn cert_until(cn: &str, public: &openssl::pkey::PKeyRef<openssl::pkey::Public>, not_after: i64) -> String {
    static SIGNER: std::sync::LazyLock<openssl::pkey::PKey<openssl::pkey::Private>> =
        std::sync::LazyLock::new(|| openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap());
    let signer = &*SIGNER;
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(public).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::from_unix(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    b.sign(signer, openssl::hash::MessageDigest::sha256()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(b.build().to_der().unwrap())
}

/// IdP metadata listing `certs` as signing certificates.
fn metadata_with(certs: &[String]) -> String {
    let kds: String = certs
        .iter()
        .map(|c| format!("<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{c}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"))
        .collect();
    format!(
        "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" entityID=\"https://heavy.test\"><md:IDPSSODescriptor protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">{kds}<md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"https://heavy.test/sso\"/></md:IDPSSODescriptor></md:EntityDescriptor>"
    )
}

/// Every signature is tried against every IdP certificate, so metadata
/// whose keys cost much to verify with would let anyone posting to the
/// ACS spend the gateway's CPU: more than 16 signing certificates, an RSA
/// key over 8192 bits or an exponent over 32 bits are refused; 16
/// ordinary ones are accepted.
#[tokio::test]
async fn idp_metadata_whose_keys_cost_much_to_verify_is_refused() {
    use openssl::bn::BigNum;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    let public = |n_bits: i32, e: &BigNum| {
        let mut n = BigNum::new().unwrap();
        n.rand(n_bits, openssl::bn::MsbOption::ONE, true).unwrap();
        PKey::from_rsa(Rsa::from_public_components(n, BigNum::from_slice(&e.to_vec()).unwrap()).unwrap()).unwrap()
    };
    let f4 = BigNum::from_u32(65537).unwrap();
    let ordinary = public(2048, &f4);
    let certs: Vec<String> = (0..17).map(|i| cert_with_key(&format!("k{i}"), &ordinary)).collect();

    let refused = |md: String| async move {
        try_setup(&ctx(), serde_json::json!({ "metadata_xml": md }))
            .await
            .unwrap_err()
    };
    let e = refused(metadata_with(&certs)).await;
    assert_eq!(e.field, "metadata_xml");
    assert!(e.message.contains("17 IdP signing certificates"), "{}", e.message);
    let e = refused(metadata_with(&[cert_with_key("big", &public(8200, &f4))])).await;
    assert!(e.message.contains("8200-bit RSA key"), "{}", e.message);
    let huge_e = BigNum::from_dec_str("8589934593").unwrap(); // 2^33 + 1
    let e = refused(metadata_with(&[cert_with_key("e", &public(2048, &huge_e))])).await;
    assert!(e.message.contains("34-bit exponent"), "{}", e.message);

    try_setup(
        &ctx(),
        serde_json::json!({ "metadata_xml": metadata_with(&certs[..16]) }),
    )
    .await
    .expect("16 ordinary certificates");
}

/// A certificate the IdP's metadata publishes for encryption only
/// (`use="encryption"`) is never trusted to verify the IdP's signatures;
/// one of no stated use serves both (SAML 2.0 metadata, 2.4.1.1). Metadata
/// with encryption certificates only has no signing certificate at all.
#[tokio::test]
async fn an_idp_certificate_published_for_encryption_only_never_verifies_signatures() {
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    let cert = |cn: &str| {
        let rsa = Rsa::generate(2048).unwrap();
        let public = PKey::public_key_from_pem(&rsa.public_key_to_pem().unwrap()).unwrap();
        cert_with_key(cn, &public)
    };
    let (signing, encryption, either) = (cert("signing"), cert("encryption"), cert("either"));
    let descriptor = |usage: Option<&str>, c: &str| {
        let usage = usage.map(|u| format!(" use=\"{u}\"")).unwrap_or_default();
        format!("<md:KeyDescriptor{usage}><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{c}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>")
    };
    let with = |kds: String| metadata_with(&[]).replace("protocol\">", &format!("protocol\">{kds}"));
    let md = with(
        descriptor(Some("signing"), &signing)
            + &descriptor(Some("encryption"), &encryption)
            + &descriptor(None, &either),
    );
    let cfg = try_setup(&ctx(), serde_json::json!({ "metadata_xml": md }))
        .await
        .unwrap();
    assert_eq!(cfg.idp_certificates, vec![signing, either]);

    let md = with(descriptor(Some("encryption"), &encryption));
    let e = try_setup(&ctx(), serde_json::json!({ "metadata_xml": md }))
        .await
        .unwrap_err();
    assert_eq!(e.field, "metadata_xml");
    assert!(e.message.contains("no IdP signing certificate"), "{}", e.message);
}

/// A metadata URL is kept as given and shown in the connection's view, its
/// audit events and every fetch's log line: one carrying a user name or
/// password is refused (`saml.metadata_url_credentials`) before it is
/// fetched, and the refusal does not repeat it.
#[tokio::test(flavor = "current_thread")]
async fn a_metadata_url_carrying_a_password_is_refused_before_it_is_fetched() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (logs, _guard) = crate::support::logs::Captured::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = okta_metadata();
    let fetched = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = fetched.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    let (mut ctx, _) = ctx_at("2030-01-01T00:00:00Z".parse().unwrap());
    ctx.http = portcullis::upstream::http::OutboundHttp::new(portcullis::upstream::http::OutboundConfig {
        allow_private_networks: true,
        ..Default::default()
    })
    .unwrap();
    for url in [
        format!("http://svc:metadata-pass-s3cret@{addr}/metadata"),
        format!("http://metadata-pass-s3cret@{addr}/metadata"),
    ] {
        let e = try_setup(&ctx, serde_json::json!({ "metadata_url": url }))
            .await
            .unwrap_err();
        assert_eq!(e.field, "metadata_url", "{e}");
        assert!(e.message.contains("saml.metadata_url_credentials"), "{}", e.message);
        assert!(!e.message.contains("metadata-pass-s3cret"), "{}", e.message);
    }
    assert_eq!(fetched.load(Ordering::SeqCst), 0, "nothing was fetched");
    assert_eq!(
        logs.with_reason("saml.metadata_url_credentials").len(),
        2,
        "{}",
        logs.text()
    );
    assert!(!logs.text().contains("metadata-pass-s3cret"), "{}", logs.text());
}

/// A metadata URL stored with a password before those were refused is
/// shown without it: in the connection's view and in the audit events of
/// its changes.
#[tokio::test]
async fn a_stored_metadata_urls_password_is_neither_shown_nor_audited() {
    let app = crate::support::app::spawn_app(crate::support::app::AppOptions {
        dev: true,
        ..Default::default()
    })
    .await;
    app.create_tenant("cred-acme", "Acme", &[]).await;
    app.create_saml_connection(
        "cred-acme",
        serde_json::json!({ "id": "corp", "metadata_xml": okta_metadata() }),
    )
    .await;
    let (t, c) = (
        TenantId::parse("cred-acme").unwrap(),
        ConnectionId::parse("corp").unwrap(),
    );
    let mut conn = app.state.tenants.connection(&t, &c).await.unwrap().unwrap();
    let portcullis::upstream::ConnectionKind::Saml(cfg) = &mut conn.kind else {
        panic!("not SAML")
    };
    cfg.metadata_url = Some(url::Url::parse("https://svc:stored-pass-s3cret@idp.example/metadata?x=1").unwrap());
    app.state
        .tenants
        .put_connection(&conn, portcullis::tenant::IssuerChange::KeepUsers)
        .await
        .unwrap();
    let path = "/admin/v1/tenants/cred-acme/connections/corp";
    let (status, view) = app.admin(reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["metadata_url"], "https://…@idp.example/metadata?x=1", "{view}");
    let (status, patched) = app
        .admin(
            reqwest::Method::PATCH,
            path,
            Some(serde_json::json!({ "clock_skew_secs": 90 })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (status, audit) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/cred-acme/audit", None)
        .await;
    assert_eq!(status, 200, "{audit}");
    assert!(audit.to_string().contains("connection.updated"), "{audit}");
    for shown in [view.to_string(), patched.to_string(), audit.to_string()] {
        assert!(!shown.contains("stored-pass-s3cret"), "{shown}");
    }
}

/// A one-shot metadata server on loopback serving `body`, counting the
/// connections it accepts.
async fn metadata_server(body: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
    });
    (format!("http://{addr}/metadata"), hits)
}

fn private_ctx() -> UpstreamContext {
    let (mut ctx, _) = ctx_at("2030-01-01T00:00:00Z".parse().unwrap());
    ctx.http = portcullis::upstream::http::OutboundHttp::new(portcullis::upstream::http::OutboundConfig {
        allow_private_networks: true,
        ..Default::default()
    })
    .unwrap();
    ctx
}

/// Set-up holds new metadata to the rule the refresh applies: at least one
/// signing certificate still valid by the gateway's clock, else
/// `metadata.no_usable_certificate` (given as XML or fetched from a URL).
/// One expired certificate beside a valid one is an IdP's rollover and is
/// taken, both kept.
#[tokio::test(flavor = "current_thread")]
async fn metadata_whose_signing_certificates_have_all_expired_is_refused_at_set_up() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let key = |cn: &str| {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let public = openssl::pkey::PKey::public_key_from_pem(&rsa.public_key_to_pem().unwrap()).unwrap();
        (cn.to_owned(), public)
    };
    let ((a, ka), (b, kb)) = (key("old"), key("new"));
    // ctx() reads 2030-01-01; 1_861_920_000 is 2029-01-01, 1_900_000_000 is 2030-03-17.
    let expired = cert_until(&a, &ka, 1_861_920_000);
    let expired_too = cert_until(&b, &kb, 1_893_456_000); // 2030-01-01T00:00:00Z: not after now
    let valid = cert_until(&b, &kb, 1_900_000_000);

    let e = try_setup(
        &ctx(),
        serde_json::json!({ "metadata_xml": metadata_with(&[expired.clone(), expired_too]) }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "metadata_xml", "{e}");
    assert!(e.message.contains("metadata.no_usable_certificate"), "{}", e.message);

    let (url, _) = metadata_server(metadata_with(std::slice::from_ref(&expired))).await;
    let e = try_setup(&private_ctx(), serde_json::json!({ "metadata_url": url }))
        .await
        .unwrap_err();
    assert_eq!(e.field, "metadata_url", "{e}");
    assert!(e.message.contains("metadata.no_usable_certificate"), "{}", e.message);
    assert_eq!(
        logs.with_reason("metadata.no_usable_certificate").len(),
        2,
        "{}",
        logs.text()
    );

    let cfg = try_setup(
        &ctx(),
        serde_json::json!({ "metadata_xml": metadata_with(&[expired.clone(), valid.clone()]) }),
    )
    .await
    .expect("a rollover: one certificate still valid");
    assert_eq!(cfg.idp_certificates, vec![expired, valid]);
}

/// One IdP's metadata is a few KB (Entra's about 25): a document over
/// `MAX_METADATA_BYTES` (256 KiB), given as XML or served at the
/// metadata URL, is refused (`saml.metadata_too_large`), the fetched one
/// from its Content-Length, before its body is read; one just under it is
/// taken.
#[tokio::test(flavor = "current_thread")]
async fn metadata_over_the_size_limit_is_refused_given_or_fetched() {
    let (logs, _guard) = crate::support::logs::Captured::start();
    let limit = portcullis::upstream::saml::MAX_METADATA_BYTES;
    assert_eq!(limit, 256 * 1024);
    let padded = |total: usize| {
        let md = okta_metadata();
        let at = md.find("<md:IDPSSODescriptor").unwrap();
        let pad = total - md.len() - "<!---->".len();
        format!("{}<!--{}-->{}", &md[..at], "x".repeat(pad), &md[at..])
    };
    let (over, under) = (padded(limit + 1), padded(limit));
    assert_eq!((over.len(), under.len()), (limit + 1, limit));

    let Err(e) = try_setup(&ctx(), serde_json::json!({ "metadata_xml": over.clone() })).await else {
        panic!("256 KiB and one byte given was accepted");
    };
    assert_eq!(e.field, "metadata_xml", "{e}");
    assert!(e.message.contains("saml.metadata_too_large"), "{}", e.message);

    let (url, _) = metadata_server(over).await;
    let Err(e) = try_setup(&private_ctx(), serde_json::json!({ "metadata_url": url })).await else {
        panic!("256 KiB and one byte fetched was accepted");
    };
    assert_eq!(e.field, "metadata_url", "{e}");
    assert!(e.message.contains("saml.metadata_too_large"), "{}", e.message);
    assert_eq!(logs.with_reason("saml.metadata_too_large").len(), 2, "{}", logs.text());

    try_setup(&ctx(), serde_json::json!({ "metadata_xml": under.clone() }))
        .await
        .expect("256 KiB given");
    let (url, _) = metadata_server(under).await;
    try_setup(&private_ctx(), serde_json::json!({ "metadata_url": url }))
        .await
        .expect("256 KiB fetched");
}
