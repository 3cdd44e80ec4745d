//! Signature placement, algorithm allow-list and xmlsec verification.
//!
//! Before xmlsec runs, every `ds:Signature` must sit where the SAML profile
//! puts it (a direct child of the Response or of the Assertion), reference
//! exactly its parent by id, and use only allowed algorithms and transforms.
//! xmlsec then verifies, in place in the document we parsed, against the
//! connection's keys only (loaded once per connector, `dsig.rs`; KeyInfo in
//! the message is never used as a key) and checks that the Reference's
//! digest was computed over the signed element itself (its pre-digest
//! buffer starts with that element's start tag and ID). The rest of the ACS
//! reads that element, in the same parse, and nothing outside it.

use super::dsig::{self, IdpKeys};
use super::reason::SamlReason;
use super::validate::Reject;
use super::xml::El;
use super::xml::{self, DS};
use libxml::tree::Document;
use samael::crypto::AllowedSignatureAlgorithm;
use serde::{Deserialize, Serialize};

/// A signature algorithm a connection may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignatureAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256.
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// RSA with SHA-384.
    #[serde(rename = "rsa-sha384")]
    RsaSha384,
    /// RSA with SHA-512.
    #[serde(rename = "rsa-sha512")]
    RsaSha512,
    /// ECDSA with SHA-256.
    #[serde(rename = "ecdsa-sha256")]
    EcdsaSha256,
    /// ECDSA with SHA-384.
    #[serde(rename = "ecdsa-sha384")]
    EcdsaSha384,
    /// ECDSA with SHA-512.
    #[serde(rename = "ecdsa-sha512")]
    EcdsaSha512,
    /// RSA with SHA-1: only by explicit opt-in, for IdPs that cannot do better.
    #[serde(rename = "rsa-sha1")]
    RsaSha1,
}

impl SignatureAlgorithm {
    /// The default allow-list: SHA-256 and stronger.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::RsaSha256,
            Self::RsaSha384,
            Self::RsaSha512,
            Self::EcdsaSha256,
            Self::EcdsaSha384,
            Self::EcdsaSha512,
        ]
    }

    fn uri(self) -> &'static str {
        match self {
            Self::RsaSha1 => "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            other => other.samael().map(|a| a.signature_uri()).unwrap_or_default(),
        }
    }

    fn digest_uri(self) -> &'static str {
        match self {
            Self::RsaSha1 => "http://www.w3.org/2000/09/xmldsig#sha1",
            other => other.samael().map(|a| a.digest_uri()).unwrap_or_default(),
        }
    }

    fn samael(self) -> Option<AllowedSignatureAlgorithm> {
        Some(match self {
            Self::RsaSha256 => AllowedSignatureAlgorithm::RsaSha256,
            Self::RsaSha384 => AllowedSignatureAlgorithm::RsaSha384,
            Self::RsaSha512 => AllowedSignatureAlgorithm::RsaSha512,
            Self::EcdsaSha256 => AllowedSignatureAlgorithm::EcdsaSha256,
            Self::EcdsaSha384 => AllowedSignatureAlgorithm::EcdsaSha384,
            Self::EcdsaSha512 => AllowedSignatureAlgorithm::EcdsaSha512,
            Self::RsaSha1 => return None,
        })
    }
}

const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// Transforms a SAML signature may use: enveloped + canonicalization only
/// (no XPath or XSLT, which let a signature cover something other than its parent).
const ALLOWED_TRANSFORMS: &[&str] = &[
    ENVELOPED,
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/2006/12/xml-c14n11",
];

/// Checks one signature: a direct child of `parent`, one Reference to
/// `#parent@ID`, allowed transforms and algorithms.
pub(crate) fn check_signature(sig: &El<'_>, parent: &El<'_>, allowed: &[SignatureAlgorithm]) -> Result<(), Reject> {
    let placement = |d: &str| Reject::new(SamlReason::SignatureInvalid, d.to_owned());
    let signed_info = xml::child(sig, DS, "SignedInfo").ok_or_else(|| placement("Signature without SignedInfo"))?;
    let id = xml::attr(parent, "ID").ok_or_else(|| placement("signed element has no ID"))?;
    let refs = xml::children(&signed_info, DS, "Reference");
    let [reference] = refs.as_slice() else {
        return Err(placement("a signature must have exactly one Reference"));
    };
    if xml::attr(reference, "URI").as_deref() != Some(&format!("#{id}")) {
        return Err(placement(
            "the signature does not reference the element that contains it",
        ));
    }
    // SAML Core 5.4.3-5.4.4: the enveloped transform and one
    // canonicalization, each at most once. xmlsec runs every transform and
    // digests before it looks at the signature value, re-parsing the signed
    // element between two canonicalizations, so a chain of them would be
    // unbounded work and memory for anyone who can post to the ACS.
    let (mut enveloped, mut c14n) = (0usize, 0usize);
    for t in xml::descendants(reference, DS, "Transform") {
        let alg = xml::attr(&t, "Algorithm").unwrap_or_default();
        if !ALLOWED_TRANSFORMS.contains(&alg.as_str()) {
            return Err(placement(&format!("transform {alg} is not allowed")));
        }
        if alg == ENVELOPED {
            enveloped += 1;
        } else {
            c14n += 1;
        }
        if enveloped > 1 || c14n > 1 {
            return Err(placement(
                "a Reference may have the enveloped transform and one canonicalization, each once",
            ));
        }
    }
    let method = xml::child(&signed_info, DS, "SignatureMethod")
        .and_then(|m| xml::attr(&m, "Algorithm"))
        .unwrap_or_default();
    if !allowed.iter().any(|a| a.uri() == method) {
        return Err(Reject::new(
            SamlReason::SignatureAlgorithmNotAllowed,
            format!("signature algorithm {method} is not allowed"),
        ));
    }
    let digest = xml::child(reference, DS, "DigestMethod")
        .and_then(|m| xml::attr(&m, "Algorithm"))
        .unwrap_or_default();
    if !allowed.iter().any(|a| a.digest_uri() == digest) {
        return Err(Reject::new(
            SamlReason::DigestAlgorithmNotAllowed,
            format!("digest algorithm {digest} is not allowed"),
        ));
    }
    Ok(())
}

/// Verifies the one signature of `signed` (its direct child `ds:Signature`)
/// in place in `doc` against the connection's keys, and checks that what it
/// digested is `signed` itself.
///
/// The caller has run [`check_signature`] on it (one Reference to `#` + the
/// element's `ID`, only enveloped and canonicalization transforms, allowed
/// algorithms), checked that ids are unique and that `signed` holds no
/// comment; it then reads `signed`, in `doc`, and nothing outside it: the
/// subtree the digest covered, less the enveloped signature, which the
/// readers never enter. Other signatures in `doc` (a Response signature next
/// to a signed Assertion) are not looked at.
pub(crate) fn verify(doc: &Document, signed: &El<'_>, keys: &IdpKeys) -> Result<(), Reject> {
    let invalid = |d: &str| Reject::new(SamlReason::SignatureInvalid, format!("xmlsec: {d}"));
    let sig = xml::child(signed, DS, "Signature").ok_or_else(|| invalid("no signature on the signed element"))?;
    let id = xml::attr(signed, "ID").ok_or_else(|| invalid("signed element has no ID"))?;
    dsig::verify_in_place(doc, signed, &id, &sig, keys).map_err(invalid)
}
