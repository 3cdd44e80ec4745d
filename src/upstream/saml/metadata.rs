//! IdP metadata in, SP metadata out.

use super::xml::{self, DS, MD};
use base64::Engine as _;

/// HTTP-Redirect binding URI.
pub(crate) const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
/// HTTP-POST binding URI.
pub(crate) const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";

/// What we keep from an IdP's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdpMetadata {
    /// The IdP entity id (the expected `Issuer`).
    pub entity_id: String,
    /// SSO endpoint for the HTTP-Redirect binding.
    pub sso_redirect: Option<String>,
    /// SSO endpoint for the HTTP-POST binding.
    pub sso_post: Option<String>,
    /// `WantAuthnRequestsSigned`.
    pub want_authn_requests_signed: bool,
    /// Signing certificates, base64 DER, each parsed successfully by OpenSSL.
    pub signing_certificates: Vec<String>,
}

/// The largest IdP metadata document a connection takes, in bytes: given
/// as `metadata_xml` (admin API, portal, tenant file, import) or fetched
/// from a `metadata_url` (at set-up and on every refresh, where the fetch
/// stops reading past it). One entity's metadata is small (Entra's about
/// 25 KB, Okta's 5 KB, sixteen signing certificates about 30 KB); the
/// document is stored with the connection and read again at each of its
/// changes, so the outbound client's general limit (1 MiB) is far more than
/// it needs. Larger is refused: [`METADATA_TOO_LARGE`].
pub const MAX_METADATA_BYTES: usize = 256 * 1024;

/// The `Accept` header of a metadata fetch.
pub const METADATA_ACCEPT: &str = "application/samlmetadata+xml, application/xml, text/xml, */*;q=0.5";

/// Metadata over [`MAX_METADATA_BYTES`].
pub const METADATA_TOO_LARGE: &str = "saml.metadata_too_large";

/// A `metadata_url` carrying a user name or password: refused at set-up
/// and, for one stored before that rule, at every fetch, before any request.
pub const METADATA_URL_CREDENTIALS: &str = "saml.metadata_url_credentials";

/// Metadata whose signing certificates have all expired (at set-up and on
/// refresh).
pub const NO_USABLE_CERTIFICATE: &str = "metadata.no_usable_certificate";

/// Whether `url` carries a user name or password. The URL is kept as given
/// and shown in the connection's view, its audit events and the log lines
/// of every fetch, so such a URL is never fetched ([`METADATA_URL_CREDENTIALS`]).
pub fn carries_credentials(url: &url::Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Whether any of `certificates` (base64 DER) is still valid at `now_unix`
/// (its `notAfter` is later). An IdP that rotates publishes the new
/// certificate beside the old one, so one expired certificate next to a
/// valid one is usable; metadata with none valid is [`NO_USABLE_CERTIFICATE`].
pub fn any_certificate_current(certificates: &[String], now_unix: i64) -> bool {
    let Ok(now) = openssl::asn1::Asn1Time::from_unix(now_unix) else {
        return false;
    };
    certificates.iter().any(|b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .ok()
            .and_then(|der| openssl::x509::X509::from_der(&der).ok())
            .and_then(|cert| cert.not_after().compare(&now).ok())
            .is_some_and(|o| o == std::cmp::Ordering::Greater)
    })
}

/// Checks a URL the IdP's metadata (or the admin) gives for the browser or
/// for us to reach: `https` with a host, or `http` only when private networks
/// are allowed and the host is loopback or private (a literal address the
/// outbound guard refuses, or `localhost`), the same rule as the guarded
/// outbound client. Never `javascript:`, `data:` or any other scheme. The
/// error is a sentence for the admin.
pub(crate) fn check_idp_url(location: &str, allow_private_networks: bool) -> Result<url::Url, String> {
    let shown = super::validate::clip(location.to_owned(), 200);
    let url = url::Url::parse(location.trim()).map_err(|_| format!("{shown:?} is not a URL"))?;
    let host = url.host().ok_or_else(|| format!("{shown:?} has no host"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_private_networks => {
            let private = match host {
                url::Host::Ipv4(ip) => crate::upstream::http::guard::is_forbidden(ip.into()),
                url::Host::Ipv6(ip) => crate::upstream::http::guard::is_forbidden(ip.into()),
                url::Host::Domain(d) => {
                    let d = d.trim_end_matches('.').to_ascii_lowercase();
                    d == "localhost" || d.ends_with(".localhost")
                }
            };
            if private {
                Ok(url)
            } else {
                Err(format!(
                    "{shown:?} must use https (http only for loopback or private hosts)"
                ))
            }
        }
        _ => Err(format!("{shown:?} must be an https URL")),
    }
}

/// The most signing certificates an IdP's metadata may list (each
/// signature is tried against each: IdPs publish one to three).
pub(crate) const MAX_SIGNING_CERTIFICATES: usize = 16;
/// The largest RSA key accepted in a signing certificate.
const MAX_RSA_BITS: u32 = 8192;
/// The longest RSA public exponent accepted (65537 has 17 bits).
const MAX_RSA_EXPONENT_BITS: i32 = 32;

/// Parses IdP metadata (an EntityDescriptor, or an EntitiesDescriptor from
/// which `wanted` picks the entity; the first IdP when unset). Every SSO and
/// SLO location must pass [`check_idp_url`]. The error is a sentence for the
/// admin.
pub(crate) fn parse_idp_metadata(
    text: &str,
    wanted: Option<&str>,
    allow_private_networks: bool,
) -> Result<IdpMetadata, String> {
    let doc = xml::parse_strict(text).map_err(|e| match e {
        xml::ParseError::Dtd => "the metadata declares a DTD or entities, which are refused".to_owned(),
        xml::ParseError::Malformed => "the metadata is not well-formed XML".to_owned(),
    })?;
    let root = xml::El::root(&doc).ok_or_else(|| "the metadata is empty".to_owned())?;
    let mut candidates = Vec::new();
    if xml::is(&root, MD, "EntityDescriptor") {
        candidates.push(root);
    }
    candidates.extend(xml::descendants(&root, MD, "EntityDescriptor"));
    let (entity, idp) = candidates
        .iter()
        .filter(|e| wanted.is_none_or(|w| xml::attr(e, "entityID").as_deref() == Some(w)))
        .find_map(|e| xml::child(e, MD, "IDPSSODescriptor").map(|d| (*e, d)))
        .ok_or_else(|| match wanted {
            Some(w) => format!("the metadata has no IdP with entityID {w}"),
            None => "the metadata has no IDPSSODescriptor (is this SP metadata?)".to_owned(),
        })?;
    let entity_id = xml::attr(&entity, "entityID")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| "the metadata has no entityID".to_owned())?;

    let mut signing_certificates = Vec::new();
    for kd in xml::children(&idp, MD, "KeyDescriptor") {
        if xml::attr(&kd, "use").is_some_and(|u| u != "signing") {
            continue;
        }
        for cert in xml::descendants(&kd, DS, "X509Certificate") {
            let b64: String = xml::text(&cert).split_whitespace().collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| "a signing certificate is not valid base64".to_owned())?;
            let cert = openssl::x509::X509::from_der(&der)
                .map_err(|_| "a signing certificate is not a valid X.509 certificate".to_owned())?;
            let key = cert
                .public_key()
                .map_err(|_| "a signing certificate has an unsupported key".to_owned())?;
            if key.id() == openssl::pkey::Id::RSA && key.bits() < 2048 {
                return Err(format!(
                    "a signing certificate has a {}-bit RSA key; at least 2048 bits are required",
                    key.bits()
                ));
            }
            // Every signature is tried against every certificate: keys that
            // cost much to verify with would let anyone who posts to the ACS
            // spend the gateway's CPU (every tenant's).
            if key.id() == openssl::pkey::Id::RSA {
                let rsa = key
                    .rsa()
                    .map_err(|_| "a signing certificate has an unsupported key".to_owned())?;
                if key.bits() > MAX_RSA_BITS || rsa.e().num_bits() > MAX_RSA_EXPONENT_BITS {
                    return Err(format!(
                        "a signing certificate has a {}-bit RSA key with a {}-bit exponent; at most {MAX_RSA_BITS} bits and a {MAX_RSA_EXPONENT_BITS}-bit exponent are accepted",
                        key.bits(),
                        rsa.e().num_bits()
                    ));
                }
            }
            if !signing_certificates.contains(&b64) {
                signing_certificates.push(b64);
            }
        }
    }
    if signing_certificates.is_empty() {
        return Err("the metadata has no IdP signing certificate".to_owned());
    }
    if signing_certificates.len() > MAX_SIGNING_CERTIFICATES {
        return Err(format!(
            "the metadata has {} IdP signing certificates; at most {MAX_SIGNING_CERTIFICATES} are accepted",
            signing_certificates.len()
        ));
    }

    let mut sso_redirect = None;
    let mut sso_post = None;
    for slo in xml::children(&idp, MD, "SingleLogoutService") {
        for name in ["Location", "ResponseLocation"] {
            if let Some(location) = xml::attr(&slo, name) {
                check_idp_url(&location, allow_private_networks)
                    .map_err(|e| format!("SingleLogoutService {name} {e}"))?;
            }
        }
    }
    for sso in xml::children(&idp, MD, "SingleSignOnService") {
        let (Some(binding), Some(location)) = (xml::attr(&sso, "Binding"), xml::attr(&sso, "Location")) else {
            continue;
        };
        check_idp_url(&location, allow_private_networks).map_err(|e| format!("SingleSignOnService Location {e}"))?;
        if binding == BINDING_REDIRECT && sso_redirect.is_none() {
            sso_redirect = Some(location);
        } else if binding == BINDING_POST && sso_post.is_none() {
            sso_post = Some(location);
        }
    }
    if sso_redirect.is_none() && sso_post.is_none() {
        return Err("the metadata has no SingleSignOnService with the HTTP-Redirect or HTTP-POST binding".to_owned());
    }
    let want_authn_requests_signed =
        xml::attr(&idp, "WantAuthnRequestsSigned").is_some_and(|v| v == "true" || v == "1");
    Ok(IdpMetadata {
        entity_id: entity_id.trim().to_owned(),
        sso_redirect,
        sso_post,
        want_authn_requests_signed,
        signing_certificates,
    })
}

/// The SP metadata document.
pub(crate) fn sp_metadata(
    entity_id: &str,
    acs_url: &str,
    signing_certificates: &[String],
    encryption_certificates: &[String],
    authn_requests_signed: bool,
) -> String {
    let key = |usage: &str, certificate_b64: &str| {
        format!(
            "<md:KeyDescriptor use=\"{usage}\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{certificate_b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>{}</md:KeyDescriptor>",
            if usage == "encryption" {
                "<md:EncryptionMethod Algorithm=\"http://www.w3.org/2009/xmlenc11#aes256-gcm\"/><md:EncryptionMethod Algorithm=\"http://www.w3.org/2009/xmlenc11#aes128-gcm\"/><md:EncryptionMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#aes256-cbc\"/><md:EncryptionMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#aes128-cbc\"/><md:EncryptionMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p\"/>"
            } else {
                ""
            }
        )
    };
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "<md:EntityDescriptor xmlns:md=\"{md}\" xmlns:ds=\"{ds}\" entityID=\"{entity}\">",
            "<md:SPSSODescriptor AuthnRequestsSigned=\"{signed}\" WantAssertionsSigned=\"true\" ",
            "protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">",
            "{signing}{encryption}",
            "<md:AssertionConsumerService Binding=\"{post}\" Location=\"{acs}\" index=\"0\" isDefault=\"true\"/>",
            "</md:SPSSODescriptor></md:EntityDescriptor>"
        ),
        md = MD,
        ds = DS,
        entity = xml::escape(entity_id),
        signed = authn_requests_signed,
        signing = signing_certificates
            .iter()
            .map(|c| key("signing", c))
            .collect::<String>(),
        encryption = encryption_certificates
            .iter()
            .map(|c| key("encryption", c))
            .collect::<String>(),
        post = BINDING_POST,
        acs = xml::escape(acs_url),
    )
}
