//! AuthnRequest construction and the HTTP-Redirect / HTTP-POST bindings.

use super::keys::SpKeyMaterial;
use super::metadata::BINDING_POST;
use super::xml::{escape, DS, SAML, SAMLP};
use crate::upstream::{UpstreamError, UpstreamRedirect};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use samael::crypto::CryptoProvider as _;
use url::Url;

/// RSA-SHA256, the signature algorithm of our requests.
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";

/// A fresh request id: `_` then 32 hex digits (an NCName, as XML ids must be).
pub(crate) fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("_{}", hex::encode(bytes))
}

/// What goes into one AuthnRequest.
pub(crate) struct AuthnRequestParams<'a> {
    pub id: &'a str,
    pub issue_instant: DateTime<Utc>,
    pub destination: &'a str,
    pub acs_url: &'a str,
    pub sp_entity_id: &'a str,
    pub force_authn: bool,
    /// The `AuthnContextClassRef`s to ask for (MFA required), any one of them.
    pub requested_authn_context: Option<Vec<String>>,
}

/// The AuthnRequest XML; with `signature_cert` a signature template is placed
/// after the Issuer (for enveloped signing in the POST binding).
pub(crate) fn authn_request_xml(p: &AuthnRequestParams<'_>, signature_cert: Option<&str>) -> String {
    let force = if p.force_authn { " ForceAuthn=\"true\"" } else { "" };
    // SAML Core §3.3.2.2.1: with Comparison="exact" the IdP must use one of
    // the listed classes (or fail the request); after NameIDPolicy in schema order.
    let requested_context = p
        .requested_authn_context
        .as_ref()
        .filter(|refs| !refs.is_empty())
        .map(|refs| {
            let refs: String = refs
                .iter()
                .map(|r| format!("<saml:AuthnContextClassRef>{}</saml:AuthnContextClassRef>", escape(r)))
                .collect();
            format!("<samlp:RequestedAuthnContext Comparison=\"exact\">{refs}</samlp:RequestedAuthnContext>")
        })
        .unwrap_or_default();
    let signature = signature_cert
        .map(|cert| {
            format!(
                concat!(
                    "<ds:Signature xmlns:ds=\"{ds}\"><ds:SignedInfo>",
                    "<ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>",
                    "<ds:SignatureMethod Algorithm=\"{alg}\"/>",
                    "<ds:Reference URI=\"#{id}\"><ds:Transforms>",
                    "<ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>",
                    "<ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>",
                    "</ds:Transforms><ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/>",
                    "<ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo>",
                    "<ds:SignatureValue></ds:SignatureValue>",
                    "<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>",
                    "</ds:Signature>"
                ),
                ds = DS,
                alg = RSA_SHA256,
                id = p.id,
                cert = cert,
            )
        })
        .unwrap_or_default();
    format!(
        concat!(
            "<samlp:AuthnRequest xmlns:samlp=\"{samlp}\" xmlns:saml=\"{saml}\" ID=\"{id}\" Version=\"2.0\" ",
            "IssueInstant=\"{instant}\" Destination=\"{dest}\" AssertionConsumerServiceURL=\"{acs}\" ",
            "ProtocolBinding=\"{binding}\"{force}>",
            "<saml:Issuer>{issuer}</saml:Issuer>{signature}",
            "<samlp:NameIDPolicy AllowCreate=\"true\"/>{context}",
            "</samlp:AuthnRequest>"
        ),
        context = requested_context,
        samlp = SAMLP,
        saml = SAML,
        id = p.id,
        instant = p.issue_instant.to_rfc3339_opts(SecondsFormat::Secs, true),
        dest = escape(p.destination),
        acs = escape(p.acs_url),
        binding = BINDING_POST,
        force = force,
        issuer = escape(p.sp_entity_id),
        signature = signature,
    )
}

fn internal(detail: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::internal("saml.request_build", detail.to_string())
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// HTTP-Redirect binding: deflate, base64, RelayState and (when `keys` is
/// given) `SigAlg` + `Signature` over the exact query string sent.
pub(crate) fn redirect(
    sso_url: &str,
    xml: &str,
    relay_state: &str,
    keys: Option<&SpKeyMaterial>,
) -> Result<UpstreamRedirect, UpstreamError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(super::deflate::deflate(xml.as_bytes()));
    let mut query = format!("SAMLRequest={}&RelayState={}", enc(&encoded), enc(relay_state));
    if let Some(keys) = keys {
        query.push_str(&format!("&SigAlg={}", enc(RSA_SHA256)));
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &keys.key).map_err(internal)?;
        signer.update(query.as_bytes()).map_err(internal)?;
        let signature = signer.sign_to_vec().map_err(internal)?;
        query.push_str(&format!(
            "&Signature={}",
            enc(&base64::engine::general_purpose::STANDARD.encode(signature))
        ));
    }
    // The IdP URL may carry its own query (Google's `idpid=`); ours is appended
    // verbatim because the signature covers these exact bytes.
    let sep = if sso_url.contains('?') { '&' } else { '?' };
    let url = Url::parse(&format!("{sso_url}{sep}{query}")).map_err(internal)?;
    Ok(UpstreamRedirect::Redirect(url))
}

/// HTTP-POST binding: an auto-submitted form; enveloped-signed when `keys` is given.
pub(crate) fn post(
    sso_url: &str,
    params: &AuthnRequestParams<'_>,
    relay_state: &str,
    keys: Option<&SpKeyMaterial>,
) -> Result<UpstreamRedirect, UpstreamError> {
    let xml = match keys {
        Some(keys) => {
            super::xml::init();
            let template = authn_request_xml(params, Some(&keys.certificate_b64));
            samael::crypto::XmlSec::sign_xml(template, &keys.key_der).map_err(internal)?
        }
        None => authn_request_xml(params, None),
    };
    let action = Url::parse(sso_url).map_err(internal)?;
    Ok(UpstreamRedirect::PostForm {
        action,
        fields: vec![
            (
                "SAMLRequest".to_owned(),
                base64::engine::general_purpose::STANDARD.encode(xml.as_bytes()),
            ),
            ("RelayState".to_owned(), relay_state.to_owned()),
        ],
    })
}
