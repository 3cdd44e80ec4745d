//! Response- and assertion-level checks on signed (or, for Response fields
//! that can only reject, unsigned) content: issuer, destination, audience,
//! recipient, validity windows, InResponseTo; then the attribute mapping.

use super::mapping::amr_for;
use super::reason::SamlReason;
use super::validate::{Policy, Reject, Validated};
use super::xml::{self, El, SAML};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// How old (by its `IssueInstant`, beyond the clock skew) a Response or an
/// Assertion may be when it arrives. The browser posts the answer right after
/// the IdP issued it; an older one is stale or replayed from elsewhere.
pub(crate) const MAX_ISSUE_AGE_SECS: i64 = 300;

/// The transient NameID format: a one-off, per-session identifier (SAML Core
/// §8.3.8) that must never become the stable subject.
pub(crate) const NAMEID_TRANSIENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient";

/// The XML Schema instance namespace (`xsi:type`).
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The one `Format` an IdP's `Issuer` may name (SAML Profiles §4.1.4.2:
/// omitted, or this).
const ISSUER_FORMAT_ENTITY: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity";

/// Checks an `Issuer` element against the connection's IdP: its text is the
/// IdP's entity id and its `Format`, when present, is the entity format
/// (SAML Profiles §4.1.4.2). Another format names something else than an
/// entity (a user, an email address) that happens to read the same.
fn check_issuer(issuer: &El<'_>, what: &str, p: &Policy<'_>) -> Result<(), Reject> {
    let text = xml::text(issuer);
    if text != p.idp_entity_id {
        return Err(Reject::new(
            SamlReason::IssuerMismatch,
            format!("{what} Issuer {text:?}"),
        ));
    }
    match xml::attr(issuer, "Format") {
        Some(f) if f != ISSUER_FORMAT_ENTITY => Err(Reject::new(
            SamlReason::IssuerMismatch,
            format!("{what} Issuer Format {f:?}"),
        )),
        _ => Ok(()),
    }
}

/// Checks an `IssueInstant` (required): not ahead of us beyond the skew, and
/// not older than [`MAX_ISSUE_AGE_SECS`] plus the skew.
fn check_issue_instant(node: &El<'_>, what: &str, p: &Policy<'_>) -> Result<DateTime<Utc>, Reject> {
    let issued = time(node, "IssueInstant")?
        .ok_or_else(|| Reject::new(SamlReason::Malformed, format!("{what} without IssueInstant")))?;
    if issued > p.now + p.skew {
        return Err(Reject::new(
            SamlReason::IssueInstantInFuture,
            format!("{what} IssueInstant {issued} is ahead of now"),
        ));
    }
    if issued + Duration::seconds(MAX_ISSUE_AGE_SECS) + p.skew < p.now {
        return Err(Reject::new(
            SamlReason::IssueInstantTooOld,
            format!("{what} IssueInstant {issued} is older than {MAX_ISSUE_AGE_SECS} s"),
        ));
    }
    Ok(issued)
}

fn time(node: &El<'_>, name: &str) -> Result<Option<DateTime<Utc>>, Reject> {
    xml::attr(node, name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Reject::new(SamlReason::Malformed, format!("{name} is not a valid instant")))
        })
        .transpose()
}

/// Checks the Response fields and the trusted assertion; maps the identity.
///
/// `response_signed`: the Response's own signature was verified;
/// `encrypted`: the assertion came encrypted.
pub(crate) fn check(
    response: &El<'_>,
    response_signed: bool,
    encrypted: bool,
    assertion: &El<'_>,
    p: &Policy<'_>,
) -> Result<Validated, Reject> {
    // Response level. A signed Response, or one carrying an encrypted
    // assertion, must name its Issuer (SAML Profiles 4.1.4.2); any Issuer
    // present must be the IdP's, in the entity format.
    match xml::child(response, SAML, "Issuer") {
        Some(issuer) => check_issuer(&issuer, "Response", p)?,
        None if response_signed || encrypted => {
            return Err(Reject::new(
                SamlReason::IssuerMismatch,
                "a signed Response or one with an encrypted assertion has no Issuer",
            ))
        }
        None => {}
    }
    // A signed Response must name its Destination (SAML bindings 3.5.5.2);
    // an unsigned one may omit it, but a wrong one is refused.
    match xml::attr(response, "Destination") {
        Some(d) if d != p.acs_url => {
            return Err(Reject::new(
                SamlReason::DestinationMismatch,
                format!("Destination {d:?}"),
            ))
        }
        None if response_signed => {
            return Err(Reject::new(
                SamlReason::DestinationMismatch,
                "signed Response without Destination",
            ))
        }
        _ => {}
    }
    check_in_response_to(xml::attr(response, "InResponseTo"), p)?;

    // Assertion level.
    if xml::attr(assertion, "Version").as_deref() != Some("2.0") {
        return Err(Reject::new(SamlReason::Malformed, "Assertion Version is not 2.0"));
    }
    let assertion_id = xml::attr(assertion, "ID")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::new(SamlReason::Malformed, "Assertion without ID"))?;
    let issuer = xml::child(assertion, SAML, "Issuer")
        .ok_or_else(|| Reject::new(SamlReason::IssuerMismatch, "Assertion without Issuer"))?;
    check_issuer(&issuer, "Assertion", p)?;
    let subject = xml::child(assertion, SAML, "Subject")
        .ok_or_else(|| Reject::new(SamlReason::Malformed, "Assertion without Subject"))?;
    let name_id_el = xml::child(&subject, SAML, "NameID")
        .ok_or_else(|| Reject::new(SamlReason::Malformed, "Subject without NameID"))?;
    let name_id = xml::text(&name_id_el);
    if name_id.is_empty() {
        return Err(Reject::new(SamlReason::Malformed, "empty NameID"));
    }
    let format = xml::attr(&name_id_el, "Format");
    let name_id_is_email = match format.as_deref() {
        Some("urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress") => true,
        None | Some("urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified") => {
            name_id.contains('@') && !name_id.contains(char::is_whitespace)
        }
        Some(_) => false,
    };
    let transient = format.as_deref() == Some(NAMEID_TRANSIENT);

    let scd_until = check_subject_confirmation(&subject, p)?;
    let conditions = check_conditions(assertion, p)?;
    // After the validity windows, so an expired or early assertion keeps
    // its more telling reason code.
    check_issue_instant(response, "Response", p)?;
    let issued = check_issue_instant(assertion, "Assertion", p)?;

    let mut session_index = None;
    let mut amr = Vec::new();
    let mut acr: Option<String> = None;
    let mut auth_time = None;
    let mut session_expires_at: Option<DateTime<Utc>> = None;
    for st in xml::children(assertion, SAML, "AuthnStatement") {
        // AuthnInstant is required (SAML Core §2.7.2). It becomes auth_time,
        // which max_age is judged by: one from the future would make any
        // authentication look fresh, so it is refused beyond the skew.
        let instant = time(&st, "AuthnInstant")?
            .ok_or_else(|| Reject::new(SamlReason::Malformed, "AuthnStatement without AuthnInstant"))?;
        if instant > p.now + p.skew {
            return Err(Reject::new(
                SamlReason::AuthnInstantInFuture,
                format!("AuthnInstant {instant} is ahead of now"),
            ));
        }
        // Nor from before 1970: as a negative auth_time it would reach
        // max_age and the session's dates unchecked. The other instants
        // need no such floor: an IssueInstant that old is too old, a
        // NotOnOrAfter or SessionNotOnOrAfter has passed, a NotBefore
        // opened the window long ago.
        if instant < DateTime::UNIX_EPOCH {
            return Err(Reject::new(
                SamlReason::AuthnInstantInvalid,
                format!("AuthnInstant {instant} is before 1970-01-01"),
            ));
        }
        // With several statements, the oldest authentication is the one vouched for.
        auth_time = Some(auth_time.map_or(instant, |t: DateTime<Utc>| t.min(instant)));
        if let Some(until) = time(&st, "SessionNotOnOrAfter")? {
            if p.now - p.skew >= until {
                return Err(Reject::new(SamlReason::Expired, "SessionNotOnOrAfter has passed"));
            }
            session_expires_at = Some(session_expires_at.map_or(until, |t| t.min(until)));
        }
        if session_index.is_none() {
            session_index = xml::attr(&st, "SessionIndex");
        }
        for cr in xml::descendants(&st, SAML, "AuthnContextClassRef") {
            let class_ref = xml::text(&cr);
            if acr.is_none() && !class_ref.trim().is_empty() {
                acr = Some(class_ref.trim().to_owned());
            }
            if let Some(a) = amr_for(&class_ref) {
                if !amr.iter().any(|x| x == a) {
                    amr.push(a.to_owned());
                }
            }
        }
    }

    let mut raw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for st in xml::children(assertion, SAML, "AttributeStatement") {
        for attribute in xml::children(&st, SAML, "Attribute") {
            let Some(name) = xml::attr(&attribute, "Name") else {
                continue;
            };
            let values = raw.entry(name).or_default();
            values.extend(xml::children(&attribute, SAML, "AttributeValue").iter().map(xml::text));
        }
    }
    let mut identity = if transient {
        // A transient NameID changes every session: the stable subject must
        // come from an attribute, or there is none.
        p.mapping
            .identity_without_name_id(raw, session_index, amr)
            .ok_or_else(|| {
                Reject::new(
                    SamlReason::TransientSubject,
                    "transient NameID and no stable subject attribute",
                )
            })?
    } else {
        p.mapping
            .identity(&name_id, name_id_is_email, raw, session_index, amr)
            .ok_or_else(|| Reject::new(SamlReason::SubjectMissing, "the configured subject attribute is absent"))?
    };
    identity.auth_time = auth_time.map(|t| t.timestamp());
    identity.acr = acr;
    identity.session_expires_at = session_expires_at.map(|t| t.timestamp());
    // The replay cache keeps the id until the last instant this assertion
    // could still be accepted: every window must be open for that, so the
    // first of SubjectConfirmation and Conditions NotOnOrAfter and the
    // IssueInstant age limit to close (plus the skew) ends it. The age
    // limit bounds it, so a NotOnOrAfter in year 9999 does not keep an
    // entry per sign-in for ever. A OneTimeUse assertion is refused again
    // for as long as it is acceptable at all.
    let usable_until = [
        Some(scd_until),
        conditions.until,
        Some(issued + Duration::seconds(MAX_ISSUE_AGE_SECS)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(issued)
        + p.skew;
    Ok(Validated {
        identity,
        assertion_id,
        usable_until,
        one_time_use: conditions.one_time_use,
    })
}

fn check_in_response_to(value: Option<String>, p: &Policy<'_>) -> Result<(), Reject> {
    match (value, p.expected_in_response_to) {
        (None, _) => Ok(()),
        (Some(v), Some(expected)) if v == expected => Ok(()),
        (Some(v), Some(_)) => Err(Reject::new(
            SamlReason::InResponseToMismatch,
            format!("InResponseTo {v:?}"),
        )),
        (Some(_), None) => Err(Reject::new(
            SamlReason::UnsolicitedInResponseTo,
            "an unsolicited response carries InResponseTo",
        )),
    }
}

/// Bearer SubjectConfirmation: Recipient = ACS, NotOnOrAfter required and in
/// the future, InResponseTo bound. Returns its NotOnOrAfter.
fn check_subject_confirmation(subject: &El<'_>, p: &Policy<'_>) -> Result<DateTime<Utc>, Reject> {
    let bearer: Vec<El<'_>> = xml::children(subject, SAML, "SubjectConfirmation")
        .into_iter()
        .filter(|c| xml::attr(c, "Method").as_deref() == Some("urn:oasis:names:tc:SAML:2.0:cm:bearer"))
        .collect();
    let mut first_error = None;
    for c in &bearer {
        match check_one_confirmation(c, p) {
            Ok(until) => return Ok(until),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error
        .unwrap_or_else(|| Reject::new(SamlReason::SubjectConfirmationMissing, "no bearer SubjectConfirmation")))
}

fn check_one_confirmation(c: &El<'_>, p: &Policy<'_>) -> Result<DateTime<Utc>, Reject> {
    let data = xml::child(c, SAML, "SubjectConfirmationData")
        .ok_or_else(|| Reject::new(SamlReason::SubjectConfirmationMissing, "no SubjectConfirmationData"))?;
    match xml::attr(&data, "Recipient") {
        Some(r) if r == p.acs_url => {}
        other => {
            return Err(Reject::new(
                SamlReason::RecipientMismatch,
                format!("Recipient {other:?}"),
            ))
        }
    }
    let until = time(&data, "NotOnOrAfter")?.ok_or_else(|| {
        Reject::new(
            SamlReason::SubjectConfirmationExpiryMissing,
            "SubjectConfirmationData without NotOnOrAfter",
        )
    })?;
    if p.now - p.skew >= until {
        return Err(Reject::new(
            SamlReason::Expired,
            "SubjectConfirmationData NotOnOrAfter has passed",
        ));
    }
    if let Some(nb) = time(&data, "NotBefore")? {
        if p.now + p.skew < nb {
            return Err(Reject::new(
                SamlReason::NotYetValid,
                "SubjectConfirmationData NotBefore is ahead",
            ));
        }
    }
    match (xml::attr(&data, "InResponseTo"), p.expected_in_response_to) {
        (Some(v), Some(expected)) if v == expected => {}
        (None, Some(_)) => return Err(Reject::new(SamlReason::InResponseToMismatch, "InResponseTo missing")),
        (Some(v), Some(_)) => {
            return Err(Reject::new(
                SamlReason::InResponseToMismatch,
                format!("InResponseTo {v:?}"),
            ))
        }
        (Some(_), None) => {
            return Err(Reject::new(
                SamlReason::UnsolicitedInResponseTo,
                "an unsolicited assertion carries InResponseTo",
            ))
        }
        (None, None) => {}
    }
    Ok(until)
}

/// What the Conditions said, once checked.
struct ConditionsOk {
    /// NotOnOrAfter, when present.
    until: Option<DateTime<Utc>>,
    /// A `<OneTimeUse>` condition was present.
    one_time_use: bool,
}

/// Conditions: validity window, AudienceRestriction (required), OneTimeUse,
/// ProxyRestriction, and nothing else.
///
/// SAML Core §2.5.1.5: a relying party that does not understand a condition
/// must take the assertion as Indeterminate, i.e. not valid. So any other
/// element, including the abstract `<Condition xsi:type="...">` extension
/// point, is refused. OneTimeUse is honoured by the replay cache, which
/// holds every accepted assertion id while it could still be accepted.
/// ProxyRestriction limits who may issue further SAML assertions from this
/// one; Portcullis issues none (it issues OIDC tokens to its own apps).
fn check_conditions(assertion: &El<'_>, p: &Policy<'_>) -> Result<ConditionsOk, Reject> {
    let cond = xml::child(assertion, SAML, "Conditions")
        .ok_or_else(|| Reject::new(SamlReason::AudienceMissing, "Assertion without Conditions"))?;
    if let Some(nb) = time(&cond, "NotBefore")? {
        if p.now + p.skew < nb {
            return Err(Reject::new(SamlReason::NotYetValid, format!("NotBefore {nb}")));
        }
    }
    let until = time(&cond, "NotOnOrAfter")?;
    if let Some(until) = until {
        if p.now - p.skew >= until {
            return Err(Reject::new(SamlReason::Expired, format!("NotOnOrAfter {until}")));
        }
    }
    let mut one_time_use = 0usize;
    for c in cond.elements() {
        if xml::is(&c, SAML, "AudienceRestriction") || xml::is(&c, SAML, "ProxyRestriction") {
            continue;
        }
        if xml::is(&c, SAML, "OneTimeUse") {
            one_time_use += 1;
            continue;
        }
        let (name, ns) = (c.name(), c.ns_href());
        let kind = xml::attr_ns(&c, XSI, "type").unwrap_or_default();
        return Err(Reject::new(
            SamlReason::ConditionUnknown,
            format!("unknown condition {{{ns}}}{name} {kind}"),
        ));
    }
    if one_time_use > 1 {
        return Err(Reject::new(SamlReason::Malformed, "more than one OneTimeUse condition"));
    }
    let restrictions = xml::children(&cond, SAML, "AudienceRestriction");
    if restrictions.is_empty() {
        return Err(Reject::new(SamlReason::AudienceMissing, "no AudienceRestriction"));
    }
    // Every restriction must name us (each one is a condition on its own).
    for r in &restrictions {
        let audiences: Vec<String> = xml::children(r, SAML, "Audience").iter().map(xml::text).collect();
        if !audiences.iter().any(|a| a == p.sp_entity_id) {
            return Err(Reject::new(
                SamlReason::AudienceMismatch,
                format!("audiences {audiences:?}"),
            ));
        }
    }
    Ok(ConditionsOk {
        until,
        one_time_use: one_time_use > 0,
    })
}
