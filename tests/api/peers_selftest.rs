//! The test harness itself, without the gateway: the openid-client relying
//! party signs in directly at the oidc-provider peer through the scripted
//! browser. If this fails, the flow tests' failures say nothing about the
//! gateway.

use crate::support::browser::Browser;
use crate::support::peers::{IdpClient, RelyingParty, SamlIdp, UpstreamIdp, IDP_PASSWORD};

#[tokio::test]
async fn relying_party_signs_in_at_upstream_idp_through_scripted_browser() {
    // The RP's port is only known once it runs; the IdP needs its redirect
    // URI up front, so the RP starts first (issuer discovery is lazy).
    let idp_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = url::Url::parse(&format!("http://localhost:{idp_port}")).unwrap();
    let rp = RelyingParty::spawn("rp-selftest", &issuer).await;
    let idp = UpstreamIdp::spawn_on(
        idp_port,
        &[IdpClient {
            client_id: "selftest".into(),
            client_secret: "selftest-secret".into(),
            redirect_uris: vec![rp.redirect_uri()],
        }],
    )
    .await;
    assert_eq!(idp.issuer(), issuer.as_str().trim_end_matches('/'));
    rp.configure("selftest", "selftest-secret", "basic", "openid email profile")
        .await;

    let mut browser = Browser::new();
    let login = browser
        .get(&rp.login_url(&[("scope", "openid email profile groups")]))
        .await;
    assert!(
        idp.serves(&login.url),
        "expected the IdP login page:\n{}",
        browser.trail()
    );

    // A wrong password is refused and the form is shown again.
    let refused = browser
        .fill_and_submit(&login, Some("login"), &[("username", "alice"), ("password", "nope")])
        .await;
    assert_eq!(refused.status, 401);

    let done = browser
        .fill_and_submit(
            &refused,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    assert!(rp.is_callback(&done.url), "{}", browser.trail());
    assert_eq!(done.status, 200, "{}", done.body);
    let body = done.json();
    let claims = &body["id_token_claims"];
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@acme.test");
    assert_eq!(claims["groups"], serde_json::json!(["engineering", "admins"]));
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert!(claims["auth_time"].is_u64());
    assert!(body["access_token"].is_string());

    // The RP's wrappers (openid-client) against an independent server.
    let at = body["access_token"].as_str().unwrap();
    let info = rp.userinfo(at, Some("alice")).await;
    assert_eq!(info.status, 200, "{:?}", info.body);
    assert_eq!(info.body["email"], "alice@acme.test");
    assert_eq!(rp.introspect(at).await.body["active"], true);
    assert_eq!(rp.revoke(at, Some("access_token")).await.status, 200);
    assert_eq!(rp.introspect(at).await.body["active"], false);
    let bogus = rp.refresh("not-a-refresh-token").await;
    assert_eq!((bogus.status.as_u16(), bogus.error()), (400, Some("invalid_grant")));

    let stats = idp.stats().await;
    assert_eq!((stats.authorize, stats.logins, stats.failed_logins), (1, 1, 1));
    assert_eq!(stats.token, 2, "code exchange and the refresh attempt");

    // Same browser again: the IdP session signs in without a password.
    browser.clear_history();
    let again = browser.get(&rp.login_url(&[])).await;
    assert!(rp.is_callback(&again.url), "{}", browser.trail());
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(idp.stats().await.logins, 1);

    // prompt=login forces the password form again.
    let forced = browser.get(&rp.login_url(&[("prompt", "login")])).await;
    assert!(idp.serves(&forced.url), "{}", browser.trail());
    assert!(forced.forms().iter().any(|f| f.field("username").is_some()));
}

/// The SAML IdP peer answers an AuthnRequest (HTTP-Redirect binding) with a
/// Response whose Assertion signature xmlsec1 verifies against the IdP's
/// metadata certificate, addressed to the SP's ACS with the request's ID.
#[tokio::test]
async fn saml_idp_peer_issues_a_signed_assertion_that_xmlsec1_verifies() {
    use base64::Engine as _;
    use std::io::Write as _;

    let idp = SamlIdp::spawn().await;
    let (sp, acs) = ("http://127.0.0.1:9/sp", "http://127.0.0.1:9/acs");
    let sp_metadata = format!(
        r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{sp}"><md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"><md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{acs}" index="0" isDefault="true"/></md:SPSSODescriptor></md:EntityDescriptor>"#
    );
    assert_eq!(idp.register_sp(&sp_metadata).await, sp);

    let request = format!(
        r#"<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_selftest-request" Version="2.0" IssueInstant="2020-01-01T00:00:00Z" Destination="{}sso" AssertionConsumerServiceURL="{acs}" ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"><saml:Issuer>{sp}</saml:Issuer></samlp:AuthnRequest>"#,
        idp.peer.url
    );
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(request.as_bytes()).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflate.finish().unwrap());
    let mut sso = idp.peer.url.join("/sso").unwrap();
    sso.query_pairs_mut()
        .append_pair("SAMLRequest", &encoded)
        .append_pair("RelayState", "relay-123");

    let mut browser = Browser::new();
    let login = browser.get(&sso).await;
    assert_eq!(login.status, 200, "{}", login.body);
    let post = browser
        .fill_and_submit(
            &login,
            Some("login"),
            &[("username", "alice"), ("password", IDP_PASSWORD)],
        )
        .await;
    let form = post.form(Some("saml-post"));
    assert_eq!(form.action, acs);
    assert_eq!(form.field("RelayState"), Some("relay-123"));
    let xml = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(form.field("SAMLResponse").unwrap())
            .unwrap(),
    )
    .unwrap();
    for needle in [
        r#"InResponseTo="_selftest-request""#,
        &format!(r#"Destination="{acs}""#),
        &format!("<saml:Audience>{sp}</saml:Audience>"),
        ">alice@acme.test</saml:NameID>",
    ] {
        assert!(xml.contains(needle), "{needle} not in {xml}");
    }

    // Verify with xmlsec1 (the library the gateway's SAML stack uses).
    let metadata = idp.metadata_xml().await;
    let cert_b64: String = metadata
        .split("X509Certificate>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .split_whitespace()
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-saml-selftest-{}-{}",
        std::process::id(),
        crate::support::oidc_world::random_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, resp) = (dir.join("idp.pem"), dir.join("response.xml"));
    std::fs::write(
        &cert,
        format!("-----BEGIN CERTIFICATE-----\n{cert_b64}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    std::fs::write(&resp, &xml).unwrap();
    let out = std::process::Command::new("xmlsec1")
        .args([
            "--verify",
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
            "--pubkey-cert-pem",
        ])
        .arg(&cert)
        .arg(&resp)
        .output()
        .expect("xmlsec1 is installed (scripts/setup-system)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "xmlsec1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = idp.stats().await;
    assert_eq!((stats.authn_requests, stats.logins, stats.responses), (1, 1, 1));
}
