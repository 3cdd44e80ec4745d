//! The ACS checks of one SAMLResponse (HTTP-POST binding). Blocking and
//! CPU-bound: the connector runs it on the blocking pool.

use super::assertion;
use super::decrypt::{self, DecryptError};
use super::dsig::IdpKeys;
use super::mapping::AttributeMapping;
use super::reason::SamlReason;
use super::signature::{self, SignatureAlgorithm};
use super::xml::El;
use super::xml::{self, DS, SAML, SAMLP};
use crate::upstream::Identity;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use libxml::tree::Document;
use openssl::pkey::{PKey, Private};

/// The largest `SAMLResponse` form value accepted (base64 characters).
pub(crate) const MAX_FORM_BYTES: usize = 256 * 1024;
/// The largest decoded XML accepted.
pub(crate) const MAX_XML_BYTES: usize = 192 * 1024;

/// A rejection: stable code, log detail, and optionally a specific message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub reason: SamlReason,
    pub detail: String,
    pub message: Option<String>,
}

/// The most characters of a rejection's log detail: details quote what came
/// in (issuers, audiences, status codes), and a quote is only a hint.
pub(crate) const MAX_DETAIL_CHARS: usize = 200;

/// `text` cut to at most `max` characters (on a character boundary), with
/// an ellipsis when something was cut.
pub(crate) fn clip(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => {
            let mut cut = text;
            cut.truncate(at);
            cut.push('…');
            cut
        }
        None => text,
    }
}

impl Reject {
    pub(crate) fn new(reason: SamlReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: clip(detail.into(), MAX_DETAIL_CHARS),
            message: None,
        }
    }
}

/// What a response is checked against.
pub(crate) struct Policy<'a> {
    pub idp_entity_id: &'a str,
    /// The connection's IdP signing keys: the only keys a signature is checked against.
    pub keys: &'a IdpKeys,
    pub allowed: &'a [SignatureAlgorithm],
    pub sp_entity_id: &'a str,
    pub acs_url: &'a str,
    pub now: DateTime<Utc>,
    pub skew: Duration,
    /// The pending request id; `None` for an unsolicited response.
    pub expected_in_response_to: Option<&'a str>,
    pub want_encrypted: bool,
    pub sp_keys: &'a [PKey<Private>],
    pub mapping: &'a AttributeMapping,
}

/// An accepted assertion.
#[derive(Debug)]
pub(crate) struct Validated {
    pub identity: Identity,
    pub assertion_id: String,
    /// Until when the assertion could still be accepted (for the replay cache TTL).
    pub usable_until: DateTime<Utc>,
    /// The assertion carried a `<OneTimeUse>` condition.
    pub one_time_use: bool,
}

fn parse(text: &str) -> Result<Document, Reject> {
    xml::parse_strict(text).map_err(|e| match e {
        xml::ParseError::Dtd => Reject::new(SamlReason::DtdForbidden, "document declares a DTD or entities"),
        xml::ParseError::Malformed => Reject::new(SamlReason::Malformed, "document is not well-formed XML"),
    })
}

fn root(doc: &Document) -> Result<El<'_>, Reject> {
    El::root(doc).ok_or_else(|| Reject::new(SamlReason::Malformed, "empty document"))
}

fn status_check(response: &El<'_>) -> Result<(), Reject> {
    let code = xml::child(response, SAMLP, "Status").and_then(|s| xml::child(&s, SAMLP, "StatusCode"));
    let top = code.as_ref().and_then(|c| xml::attr(c, "Value")).unwrap_or_default();
    if top == "urn:oasis:names:tc:SAML:2.0:status:Success" {
        return Ok(());
    }
    let sub = code
        .as_ref()
        .and_then(|c| xml::child(c, SAMLP, "StatusCode"))
        .and_then(|c| xml::attr(&c, "Value"))
        .unwrap_or_default();
    let short = |u: &str| u.rsplit(':').next().unwrap_or_default().to_owned();
    let message = match (short(&top).as_str(), short(&sub).as_str()) {
        (_, "AuthnFailed" | "RequestDenied") | ("Requester", _) => "The identity provider denied the sign-in.",
        (_, "NoPassive") => "The identity provider needs you to sign in interactively.",
        (_, "NoAuthnContext") => "The identity provider could not sign you in with the required method.",
        (_, "UnknownPrincipal") => "The identity provider does not know this account.",
        ("VersionMismatch", _) => "The identity provider does not support this SAML version.",
        _ => "The identity provider reported an error and did not sign you in.",
    };
    Err(Reject {
        reason: SamlReason::StatusNotSuccess,
        detail: clip(format!("status {top} / {sub}"), MAX_DETAIL_CHARS),
        message: Some(message.to_owned()),
    })
}

/// Namespaces whose schemas define no namespaced attributes of their own
/// (SAML, metadata, XML Signature and Encryption are all unqualified): an
/// attribute in one of them is a look-alike of a real one.
const NO_QUALIFIED_ATTRIBUTES: &[&str] = &[SAMLP, SAML, xml::MD, DS, xml::XENC];

/// Refuses duplicate ids and namespaced look-alikes of SAML's attributes.
///
/// We read attributes by exact name in no namespace, but libxml2 lookups
/// by local name (which xmlsec or samael could use to resolve `ID`s) would
/// take `x:ID` for `ID`: any namespaced `ID`/`Id`/`id`, and any attribute
/// qualified by a namespace that has none, is refused so the two readings
/// can never differ.
fn check_ids_unique(root: &El<'_>) -> Result<(), Reject> {
    let mut seen = std::collections::HashSet::new();
    xml::walk_attributes(
        root,
        |ns, name| {
            if matches!(name, "ID" | "Id" | "id") || NO_QUALIFIED_ATTRIBUTES.contains(&ns) {
                return Err(Reject::new(
                    SamlReason::Malformed,
                    format!("namespaced look-alike attribute {{{ns}}}{name}"),
                ));
            }
            Ok(())
        },
        |v| {
            if !seen.insert(v.to_owned()) {
                return Err(Reject::new(SamlReason::DuplicateId, format!("id {v} appears twice")));
            }
            Ok(())
        },
    )
}

/// Signatures directly under `el` (checked) and any others below (refused).
fn own_signatures(el: &El<'_>, allowed: &[SignatureAlgorithm]) -> Result<bool, Reject> {
    let own = xml::children(el, DS, "Signature");
    if own.len() > 1 {
        return Err(Reject::new(
            SamlReason::SignatureInvalid,
            "more than one signature on one element",
        ));
    }
    for sig in &own {
        signature::check_signature(sig, el, allowed)?;
    }
    Ok(!own.is_empty())
}

/// Validates `form_value` (the base64 `SAMLResponse`).
pub(crate) fn validate(form_value: &str, p: &Policy<'_>) -> Result<Validated, Reject> {
    if form_value.len() > MAX_FORM_BYTES {
        return Err(Reject::new(SamlReason::TooLarge, "SAMLResponse exceeds the size limit"));
    }
    // Line-wrapped base64 (some IdPs wrap at 64 or 76 columns) is joined
    // first; a value of base64 characters only (the usual case, and then
    // there is nothing to join) is decoded as it is, without a copy.
    let engine = base64::engine::general_purpose::STANDARD;
    let plain = form_value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    let decoded = if plain {
        engine.decode(form_value.as_bytes())
    } else {
        let compact: String = form_value.split_whitespace().collect();
        engine.decode(compact.as_bytes())
    };
    let bytes = decoded.map_err(|_| Reject::new(SamlReason::Malformed, "SAMLResponse is not base64"))?;
    if bytes.len() > MAX_XML_BYTES {
        return Err(Reject::new(
            SamlReason::TooLarge,
            "decoded SAMLResponse exceeds the size limit",
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| Reject::new(SamlReason::Malformed, "SAMLResponse is not UTF-8"))?;
    let raw_doc = parse(&text)?;
    let raw = root(&raw_doc)?;
    if !xml::is(&raw, SAMLP, "Response") {
        return Err(Reject::new(SamlReason::Malformed, "root element is not samlp:Response"));
    }
    if xml::attr(&raw, "Version").as_deref() != Some("2.0") {
        return Err(Reject::new(SamlReason::Malformed, "Response Version is not 2.0"));
    }
    // A failure status ends the flow whether or not it is signed: reading it
    // can only reject.
    status_check(&raw)?;
    check_ids_unique(&raw)?;

    // Exactly one assertion, plain or encrypted, anywhere in the document, and
    // it must be a direct child of the Response: wrapping attacks need a second one.
    let plain = xml::descendants(&raw, SAML, "Assertion");
    let encrypted = xml::descendants(&raw, SAML, "EncryptedAssertion");
    if plain.len() + encrypted.len() != 1 {
        return Err(Reject::new(
            SamlReason::AssertionCount,
            format!(
                "{} assertions and {} encrypted assertions",
                plain.len(),
                encrypted.len()
            ),
        ));
    }
    let raw_assertion = *plain
        .first()
        .or(encrypted.first())
        .ok_or_else(|| Reject::new(SamlReason::AssertionCount, "no assertion"))?;
    if raw_assertion.parent() != Some(raw) {
        return Err(Reject::new(
            SamlReason::Malformed,
            "the assertion is not a child of the Response",
        ));
    }
    let is_encrypted = !encrypted.is_empty();
    if p.want_encrypted && !is_encrypted {
        return Err(Reject::new(
            SamlReason::EncryptionRequired,
            "plaintext assertion where encryption is required",
        ));
    }

    // Signatures may only sit on the Response and the (plain) Assertion.
    let response_signed = own_signatures(&raw, p.allowed)?;
    let assertion_signed_raw = if is_encrypted {
        false
    } else {
        own_signatures(&raw_assertion, p.allowed)?
    };
    let total = xml::count_descendants(&raw, DS, "Signature");
    if total != usize::from(response_signed) + usize::from(assertion_signed_raw) {
        return Err(Reject::new(
            SamlReason::SignatureInvalid,
            "a signature sits outside the Response and Assertion",
        ));
    }

    // When the Assertion carries its own signature, that signature is what we
    // verify and the Assertion is all we read: Response fields are then only
    // ever used to reject, so a Response signature would add nothing we rely
    // on (stripping it is always open to an attacker). It is left out of
    // verification: real IdPs (the Okta capture) send Response signatures that
    // intermediaries broke while the Assertion's own stays intact. xmlsec
    // verifies exactly one signature, in place in this one parse, and checks
    // that its digest covered the very element read afterwards
    // (`signature::verify`).
    let response_signed = response_signed && !assertion_signed_raw;
    // The element whose signature is verified carries no comment: none is
    // ever signed (`xml::has_unsigned_comment`).
    let signed_element = if assertion_signed_raw {
        Some(raw_assertion)
    } else if response_signed {
        Some(raw)
    } else {
        None
    };
    if let Some(signed) = signed_element {
        if xml::has_unsigned_comment(&signed) {
            return Err(Reject::new(
                SamlReason::SignatureInvalid,
                "a comment inside the signed element is not covered by the signature",
            ));
        }
        signature::verify(&raw_doc, &signed, p.keys)?;
    }

    // The Response fields: signed ones when the Response is signed (the
    // verified element is then `raw` itself); otherwise they only reject.
    let response = raw;

    // The trusted assertion: inside the verified Response, the verified
    // Assertion itself, or the decrypted one (`open_encrypted`).
    let decrypted_doc = if is_encrypted {
        let enc = xml::child(&response, SAML, "EncryptedAssertion")
            .ok_or_else(|| Reject::new(SamlReason::SignatureInvalid, "the encrypted assertion is not covered"))?;
        Some(open_encrypted(&enc, response_signed, p)?)
    } else {
        None
    };
    let assertion = match (&decrypted_doc, response_signed, assertion_signed_raw) {
        (Some(doc), _, _) => root(doc)?,
        (None, true, _) => xml::child(&raw, SAML, "Assertion").ok_or_else(|| {
            Reject::new(
                SamlReason::SignatureInvalid,
                "the assertion is not covered by the signature",
            )
        })?,
        (None, false, true) => raw_assertion,
        (None, false, false) => {
            return Err(Reject::new(
                SamlReason::Unsigned,
                "neither the Response nor the Assertion is signed",
            ))
        }
    };
    assertion::check(&response, response_signed, is_encrypted, &assertion, p)
}

/// Decrypts the EncryptedAssertion and returns a document whose root is the
/// trusted Assertion: verified in place against its own signature, or the plaintext
/// when the signed Response covered the ciphertext.
///
/// When no verified signature covered the ciphertext, every failure after
/// key transport reports one code: distinct "bad padding", "not XML" and
/// "bad signature" answers would be a decryption oracle (Jager and
/// Somorovsky's attack on XML Encryption CBC). The log detail keeps the cause.
fn open_encrypted(enc: &El<'_>, response_signed: bool, p: &Policy<'_>) -> Result<Document, Reject> {
    // Every current SP decryption key is tried (an overlapping rotation has
    // two): only a key-transport failure moves on to the next key.
    let mut attempt = Err(DecryptError::Failed);
    for key in p.sp_keys {
        attempt = decrypt::decrypt_assertion(enc, key);
        if !matches!(attempt, Err(DecryptError::Failed)) {
            break;
        }
    }
    let opened = attempt
        .map_err(|e| match e {
            DecryptError::Rsa15Refused => {
                Reject::new(SamlReason::KeyTransportNotAllowed, "RSA 1.5 key transport refused")
            }
            DecryptError::Unsupported(a) => Reject::new(SamlReason::EncryptionUnsupported, format!("algorithm {a}")),
            DecryptError::Malformed(d) => Reject::new(SamlReason::DecryptionFailed, d),
            DecryptError::Failed => Reject::new(
                SamlReason::DecryptionFailed,
                "the SP key does not decrypt the assertion",
            ),
        })
        .and_then(|plaintext| trusted_plaintext(&plaintext, response_signed, p));
    match opened {
        Err(r)
            if !response_signed
                && r.reason != SamlReason::KeyTransportNotAllowed
                && r.reason != SamlReason::EncryptionUnsupported =>
        {
            Err(Reject::new(
                SamlReason::DecryptionFailed,
                format!("{}: {}", r.reason.code(), r.detail),
            ))
        }
        other => other,
    }
}

fn trusted_plaintext(plaintext: &str, response_signed: bool, p: &Policy<'_>) -> Result<Document, Reject> {
    let doc = parse(plaintext)?;
    let a = root(&doc)?;
    if !xml::is(&a, SAML, "Assertion") {
        return Err(Reject::new(
            SamlReason::Malformed,
            "decrypted content is not an Assertion",
        ));
    }
    check_ids_unique(&a)?;
    if xml::count_descendants(&a, SAML, "Assertion") != 0 {
        return Err(Reject::new(SamlReason::AssertionCount, "nested assertion"));
    }
    let signed = own_signatures(&a, p.allowed)?;
    if xml::count_descendants(&a, DS, "Signature") != usize::from(signed) {
        return Err(Reject::new(
            SamlReason::SignatureInvalid,
            "a signature sits inside the assertion content",
        ));
    }
    if signed && xml::has_unsigned_comment(&a) {
        return Err(Reject::new(
            SamlReason::SignatureInvalid,
            "a comment inside the signed assertion is not covered by its signature",
        ));
    }
    if signed {
        signature::verify(&doc, &a, p.keys)?;
        Ok(doc)
    } else if response_signed {
        Ok(doc)
    } else {
        Err(Reject::new(
            SamlReason::Unsigned,
            "neither the Response nor the Assertion is signed",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_quote_only_a_bounded_part_of_the_input() {
        assert_eq!(clip("short".into(), 10), "short");
        let long = "é".repeat(MAX_DETAIL_CHARS * 50);
        let r = Reject::new(SamlReason::IssuerMismatch, format!("Issuer {long:?}"));
        assert_eq!(r.detail.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(r.detail.ends_with('…'));
    }
}
