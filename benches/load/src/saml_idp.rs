//! A test SAML IdP that signs many Responses cheaply and honestly.
//!
//! Each Response is a fresh document (its own Response and Assertion IDs,
//! `InResponseTo` of the AuthnRequest it answers, instants of the moment it
//! is signed) whose Assertion carries an enveloped XML-DSig signature:
//! RSA-SHA256 over exclusive-C14N, SHA-256 digest, as real IdPs send.
//!
//! The cheap part: the Assertion and the `SignedInfo` are *written* directly
//! in their exclusive-C14N form (sorted attributes, explicit end tags, one
//! namespace declaration on the apex element, no whitespace between
//! elements, nothing that needs escaping), so signing is one SHA-256 over the
//! Assertion, one SHA-256 and one RSA-2048 signature over `SignedInfo`, and
//! no XML parsing at all. The honest part: nothing about the check is
//! relaxed. The gateway verifies every signature with xmlsec against the
//! certificate in the connection's metadata, canonicalising itself; a byte
//! that was not canonical would break the digest and the run would report
//! the rejections as errors.

use std::fmt::Write as _;

use base64::Engine as _;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::x509::{X509NameBuilder, X509};
use sha2::{Digest, Sha256};

const SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const SAMLP: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const DS: &str = "http://www.w3.org/2000/09/xmldsig#";

/// The IdP's signing key and certificate.
pub struct SamlIdp {
    /// The IdP's entity id (the `Issuer` of every Response).
    pub entity_id: String,
    key: PKey<Private>,
    cert_b64: String,
    /// Certificates the metadata lists before the signing one (base64 DER):
    /// other keys the IdP publishes, as during a rollover.
    others_b64: Vec<String>,
    /// An attribute no connection maps, with its values, added to every
    /// Assertion ([`Self::pad_to`]; empty by default): how an IdP that sends
    /// many claims or group memberships makes a Response large.
    padding: String,
}

/// The attribute that pads a Response, around its values (each
/// [`PADDING_VALUE_BYTES`]).
const PADDING_OPEN: &str = "<saml:Attribute Name=\"entitlements\">";
const PADDING_CLOSE: &str = "</saml:Attribute>";
/// One padding value: `<saml:AttributeValue>entitlement-NNNNNN</saml:AttributeValue>`.
const PADDING_VALUE_BYTES: usize = 61;

/// What one Response is about.
pub struct ResponseSpec<'a> {
    /// The connection's ACS URL (`Destination`, `Recipient`).
    pub acs_url: &'a str,
    /// The connection's SP entity id (the `Audience`).
    pub audience: &'a str,
    /// The AuthnRequest answered; `None` for an IdP-initiated Response.
    pub in_response_to: Option<&'a str>,
    /// The user's email address (NameID and `email` attribute).
    pub email: &'a str,
}

/// An error while making keys or signing.
#[derive(Debug)]
pub struct SignError(pub String);

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SAML IdP: {}", self.0)
    }
}

impl From<openssl::error::ErrorStack> for SignError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        SignError(e.to_string())
    }
}

/// A random SAML ID: `_` and 32 hex digits.
pub fn saml_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut s = String::with_capacity(33);
    s.push('_');
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether `s` can be written as C14N text or attribute value unchanged.
fn plain(s: &str) -> bool {
    !s.contains(['&', '<', '>', '"', '\r', '\n', '\t'])
}

/// A self-signed certificate (ten years, SHA-256) for `key`, base64 DER.
fn self_signed(key: &PKey<Private>, common_name: &str) -> Result<String, SignError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", common_name)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(3650)?)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(b.build().to_der()?))
}

impl SamlIdp {
    /// A fresh RSA-2048 key and a self-signed certificate for it.
    pub fn generate(entity_id: &str) -> Result<Self, SignError> {
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let cert_b64 = self_signed(&key, "portcullis-load test IdP")?;
        Ok(Self {
            entity_id: entity_id.to_owned(),
            key,
            cert_b64,
            others_b64: Vec::new(),
            padding: String::new(),
        })
    }

    /// This IdP with `n` more certificates in its metadata, each of a fresh
    /// RSA-2048 key that never signs, listed before the signing certificate
    /// (the order in which a gateway that tries certificates in turn would
    /// reach the signing one last). The Responses still carry the signing
    /// certificate in `KeyInfo`.
    pub fn with_other_certificates(mut self, n: usize) -> Result<Self, SignError> {
        self.others_b64 = (0..n)
            .map(|i| {
                let key = PKey::from_rsa(Rsa::generate(2048)?)?;
                self_signed(&key, &format!("portcullis-load other IdP key {i}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Pads every later Response to at least `bytes` (the XML, before the
    /// binding's base64), given one Response signed without padding for the
    /// same connection (`unpadded`, its size): the Assertion gets an
    /// attribute no connection maps (`entitlements`) with as many values as
    /// it takes. Inside the signed Assertion, so the gateway parses,
    /// canonicalizes and digests every byte of it. The size is reached and
    /// passed by less than one value and the attribute's own tags (114
    /// bytes), give or take the few bytes by which Responses differ (the
    /// email's length). Returns the number of values.
    pub fn pad_to(&mut self, bytes: usize, unpadded: usize) -> usize {
        let missing = bytes.saturating_sub(unpadded);
        let values = if missing == 0 {
            0
        } else {
            missing
                .saturating_sub(PADDING_OPEN.len() + PADDING_CLOSE.len())
                .div_ceil(PADDING_VALUE_BYTES)
                .max(1)
        };
        self.padding.clear();
        if values > 0 {
            self.padding
                .reserve(PADDING_OPEN.len() + values * PADDING_VALUE_BYTES + PADDING_CLOSE.len());
            self.padding.push_str(PADDING_OPEN);
            for i in 0..values {
                // Six digits keep every value PADDING_VALUE_BYTES long up to
                // a million values, far past the gateway's 256 KB ACS limit.
                let _ = write!(
                    self.padding,
                    "<saml:AttributeValue>entitlement-{i:06}</saml:AttributeValue>"
                );
            }
            self.padding.push_str(PADDING_CLOSE);
        }
        values
    }

    /// The IdP metadata an admin would paste into the connection: the
    /// other certificates ([`Self::with_other_certificates`]), the signing
    /// certificate and an HTTP-Redirect SSO endpoint (`sso_url`; the
    /// generator never goes there, it reads the AuthnRequest from the
    /// redirect).
    pub fn metadata(&self, sso_url: &str) -> String {
        let keys: String = self
            .others_b64
            .iter()
            .chain(std::iter::once(&self.cert_b64))
            .map(|c| {
                format!(
                    "<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{c}\
                     </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
                )
            })
            .collect();
        format!(
            "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"{DS}\" entityID=\"{}\">\
             <md:IDPSSODescriptor protocolSupportEnumeration=\"{SAMLP}\">{keys}\
             <md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"{sso_url}\"/>\
             </md:IDPSSODescriptor></md:EntityDescriptor>",
            self.entity_id
        )
    }

    /// A signed Response (the Assertion signed), issued now.
    pub fn response(&self, spec: &ResponseSpec<'_>) -> Result<String, SignError> {
        for v in [spec.acs_url, spec.audience, spec.email, &self.entity_id]
            .into_iter()
            .chain(spec.in_response_to)
        {
            if !plain(v) {
                return Err(SignError(format!("{v:?} would need escaping")));
            }
        }
        #[allow(clippy::disallowed_methods)] // A test IdP stamps the real time.
        let now = chrono::Utc::now();
        let ts = |secs: i64| (now + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (issued, not_before, not_after) = (ts(0), ts(-60), ts(600));
        let (response_id, assertion_id) = (saml_id(), saml_id());
        let irt = spec
            .in_response_to
            .map(|id| format!(" InResponseTo=\"{id}\""))
            .unwrap_or_default();
        let issuer = format!("<saml:Issuer>{}</saml:Issuer>", self.entity_id);
        // Everything after the Issuer, in canonical form.
        let rest = format!(
            "<saml:Subject><saml:NameID Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\">{email}</saml:NameID>\
             <saml:SubjectConfirmation Method=\"urn:oasis:names:tc:SAML:2.0:cm:bearer\">\
             <saml:SubjectConfirmationData{irt} NotOnOrAfter=\"{not_after}\" Recipient=\"{acs}\"></saml:SubjectConfirmationData>\
             </saml:SubjectConfirmation></saml:Subject>\
             <saml:Conditions NotBefore=\"{not_before}\" NotOnOrAfter=\"{not_after}\"><saml:AudienceRestriction>\
             <saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions>\
             <saml:AuthnStatement AuthnInstant=\"{issued}\" SessionIndex=\"_s{assertion_id}\"><saml:AuthnContext>\
             <saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef>\
             </saml:AuthnContext></saml:AuthnStatement>\
             <saml:AttributeStatement>\
             <saml:Attribute Name=\"email\"><saml:AttributeValue>{email}</saml:AttributeValue></saml:Attribute>\
             <saml:Attribute Name=\"firstName\"><saml:AttributeValue>Ada</saml:AttributeValue></saml:Attribute>\
             <saml:Attribute Name=\"lastName\"><saml:AttributeValue>Lovelace</saml:AttributeValue></saml:Attribute>\
             <saml:Attribute Name=\"groups\"><saml:AttributeValue>engineering</saml:AttributeValue>\
             <saml:AttributeValue>load</saml:AttributeValue></saml:Attribute>{padding}\
             </saml:AttributeStatement></saml:Assertion>",
            padding = self.padding,
            email = spec.email,
            acs = spec.acs_url,
            audience = spec.audience,
        );
        let open = format!(
            "<saml:Assertion xmlns:saml=\"{SAML}\" ID=\"{assertion_id}\" IssueInstant=\"{issued}\" Version=\"2.0\">"
        );
        // The enveloped-signature transform removes the Signature, so the
        // digest is over the Assertion without it.
        let mut h = Sha256::new();
        h.update(open.as_bytes());
        h.update(issuer.as_bytes());
        h.update(rest.as_bytes());
        let digest = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        let signed_info = |ns: &str| {
            format!(
                "<ds:SignedInfo{ns}><ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\">\
                 </ds:CanonicalizationMethod><ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\">\
                 </ds:SignatureMethod><ds:Reference URI=\"#{assertion_id}\"><ds:Transforms>\
                 <ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"></ds:Transform>\
                 <ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"></ds:Transform></ds:Transforms>\
                 <ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"></ds:DigestMethod>\
                 <ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
            )
        };
        // Exclusive C14N of SignedInfo as the apex: it declares `ds` itself.
        let canonical_si = signed_info(&format!(" xmlns:ds=\"{DS}\""));
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key)?;
        signer.update(canonical_si.as_bytes())?;
        let sig = base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec()?);
        let signature = format!(
            "<ds:Signature xmlns:ds=\"{DS}\">{}<ds:SignatureValue>{sig}</ds:SignatureValue>\
             <ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>\
             </ds:Signature>",
            signed_info(""),
            self.cert_b64
        );
        Ok(format!(
            "<samlp:Response xmlns:samlp=\"{SAMLP}\" xmlns:saml=\"{SAML}\" Destination=\"{acs}\" ID=\"{response_id}\"{irt} \
             IssueInstant=\"{issued}\" Version=\"2.0\">{issuer}<samlp:Status>\
             <samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\"></samlp:StatusCode></samlp:Status>\
             {open}{issuer}{signature}{rest}</samlp:Response>",
            acs = spec.acs_url,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(request_id: &'a str) -> ResponseSpec<'a> {
        ResponseSpec {
            acs_url: "https://sso.example/saml/t/c/acs",
            audience: "https://sso.example/saml/t/c",
            in_response_to: Some(request_id),
            email: "user0@t.example",
        }
    }

    #[test]
    fn a_padded_response_reaches_its_size_inside_the_signed_assertion() {
        let mut idp = SamlIdp::generate("https://idp.example").unwrap();
        let id = saml_id();
        let unpadded = idp.response(&spec(&id)).unwrap();
        assert!(!unpadded.contains("entitlements"));
        for target in [unpadded.len() - 1, unpadded.len()] {
            assert_eq!(idp.pad_to(target, unpadded.len()), 0, "already {target} bytes");
        }
        for target in [unpadded.len() + 1, 16_384, 65_536, 160_000] {
            let values = idp.pad_to(target, unpadded.len());
            let padded = idp.response(&spec(&id)).unwrap();
            assert!(padded.len() >= target, "{} < {target}", padded.len());
            let most = target + PADDING_VALUE_BYTES + PADDING_OPEN.len() + PADDING_CLOSE.len();
            assert!(padded.len() < most, "{} for {target}", padded.len());
            assert_eq!(padded.matches("entitlement-").count(), values);
            // The padding is inside the Assertion, which the signature covers.
            let (assertion_start, assertion_end) = (
                padded.find("<saml:Assertion ").unwrap(),
                padded.find("</saml:Assertion>").unwrap(),
            );
            let pad = padded.find(PADDING_OPEN).unwrap();
            assert!(assertion_start < pad && pad < assertion_end);
        }
    }
}
