//! SAML attributes to the uniform claims of [`Identity`].

use crate::upstream::Identity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One attribute name or several (the first present wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single attribute name.
    One(String),
    /// Attribute names, in order of preference.
    Many(Vec<String>),
}

impl OneOrMany {
    fn names(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Per-connection attribute names for each claim. Configured names are tried
/// first, then the built-in defaults (Okta, Entra ID / ADFS, Google
/// Workspace, Shibboleth / eduPerson).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeMapping {
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<OneOrMany>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<OneOrMany>,
    /// Given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<OneOrMany>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<OneOrMany>,
    /// Groups (all values of the first attribute present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<OneOrMany>,
    /// The subject; the NameID when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<OneOrMany>,
}

const EMAIL: &[&str] = &[
    "email",
    "Email",
    "emailAddress",
    "emailaddress",
    "mail",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "urn:oid:0.9.2342.19200300.100.1.3",
    "user.email",
];
const NAME: &[&str] = &[
    "name",
    "displayName",
    "displayname",
    "http://schemas.microsoft.com/identity/claims/displayname",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "urn:oid:2.16.840.1.113730.3.1.241",
    "cn",
    "urn:oid:2.5.4.3",
];
const GIVEN: &[&str] = &[
    "firstName",
    "givenName",
    "given_name",
    "first_name",
    "FirstName",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
    "urn:oid:2.5.4.42",
];
const FAMILY: &[&str] = &[
    "lastName",
    "surname",
    "sn",
    "family_name",
    "last_name",
    "LastName",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
    "urn:oid:2.5.4.4",
];
const GROUPS: &[&str] = &[
    "groups",
    "Groups",
    "memberOf",
    "isMemberOf",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
    "urn:oid:1.3.6.1.4.1.5923.1.5.1.1",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
];

/// Stable identifiers, in order of preference, for when the NameID is
/// transient and no subject attribute is configured: the SAML subject-id and
/// pairwise-id, eduPerson's unique id and principal name, Entra ID's object
/// id, AD's objectGUID, LDAP uid; then the email address.
const STABLE_SUBJECT: &[&str] = &[
    "urn:oasis:names:tc:SAML:attribute:subject-id",
    "urn:oasis:names:tc:SAML:attribute:pairwise-id",
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.13",
    "eduPersonUniqueId",
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.6",
    "eduPersonPrincipalName",
    "http://schemas.microsoft.com/identity/claims/objectidentifier",
    "objectGUID",
    "objectguid",
    "urn:oid:0.9.2342.19200300.100.1.1",
    "uid",
];

fn first<'a>(
    raw: &'a BTreeMap<String, Vec<String>>,
    configured: Option<&OneOrMany>,
    defaults: &[&str],
) -> Option<&'a Vec<String>> {
    configured
        .map(OneOrMany::names)
        .unwrap_or_default()
        .into_iter()
        .chain(defaults.iter().copied())
        .find_map(|n| raw.get(n).filter(|v| v.iter().any(|s| !s.is_empty())))
}

fn single(values: Option<&Vec<String>>) -> Option<String> {
    values.and_then(|v| v.iter().find(|s| !s.is_empty()).cloned())
}

impl AttributeMapping {
    /// Maps a NameID and attributes to an [`Identity`]; `None` when the
    /// configured subject attribute is absent. `name_id_is_email`: the NameID
    /// is an address (emailAddress format, or unspecified and shaped like one),
    /// used as the email when no attribute carries one.
    pub(crate) fn identity(
        &self,
        name_id: &str,
        name_id_is_email: bool,
        raw: BTreeMap<String, Vec<String>>,
        session_index: Option<String>,
        amr: Vec<String>,
    ) -> Option<Identity> {
        let subject = match &self.subject {
            Some(names) => single(first(&raw, Some(names), &[]))?,
            None => name_id.to_owned(),
        };
        let email = single(first(&raw, self.email.as_ref(), EMAIL)).or_else(|| {
            // An email-shaped NameID is the address when no attribute carries it.
            name_id_is_email.then(|| name_id.to_owned())
        });
        Some(self.build(subject, email, raw, session_index, amr))
    }

    /// Like [`identity`](Self::identity) when the NameID cannot serve (it is
    /// transient): the subject is the configured subject attribute or, when
    /// none is configured, the first stable identifier present (see
    /// `STABLE_SUBJECT`, then the email attributes). `None` when there is none.
    pub(crate) fn identity_without_name_id(
        &self,
        raw: BTreeMap<String, Vec<String>>,
        session_index: Option<String>,
        amr: Vec<String>,
    ) -> Option<Identity> {
        let email = single(first(&raw, self.email.as_ref(), EMAIL));
        let subject = match &self.subject {
            Some(names) => single(first(&raw, Some(names), &[]))?,
            None => single(first(&raw, None, STABLE_SUBJECT)).or_else(|| email.clone())?,
        };
        Some(self.build(subject, email, raw, session_index, amr))
    }

    fn build(
        &self,
        subject: String,
        email: Option<String>,
        raw: BTreeMap<String, Vec<String>>,
        session_index: Option<String>,
        amr: Vec<String>,
    ) -> Identity {
        Identity {
            subject,
            email,
            email_verified: None,
            name: single(first(&raw, self.name.as_ref(), NAME)),
            given_name: single(first(&raw, self.given_name.as_ref(), GIVEN)),
            family_name: single(first(&raw, self.family_name.as_ref(), FAMILY)),
            groups: first(&raw, self.groups.as_ref(), GROUPS)
                .map(|v| v.iter().filter(|s| !s.is_empty()).cloned().collect())
                .unwrap_or_default(),
            amr,
            raw,
            session_index,
            ..Identity::default()
        }
    }
}

/// RFC 8176 `amr` values for a SAML AuthnContextClassRef, where one fits.
pub(crate) fn amr_for(class_ref: &str) -> Option<&'static str> {
    match class_ref {
        "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
        | "urn:oasis:names:tc:SAML:2.0:ac:classes:Password" => Some("pwd"),
        "http://schemas.microsoft.com/claims/multipleauthn" => Some("mfa"),
        "urn:oasis:names:tc:SAML:2.0:ac:classes:X509"
        | "urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard"
        | "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI" => Some("sc"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/";

    fn raw(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn entra_claims_map() {
        let r = raw(&[
            (&format!("{MS}emailaddress"), &["a@contoso.com"]),
            (&format!("{MS}givenname"), &["Ada"]),
            (&format!("{MS}surname"), &["Lovelace"]),
            (&format!("{MS}name"), &["a@contoso.com"]),
            (
                "http://schemas.microsoft.com/identity/claims/displayname",
                &["Ada Lovelace"],
            ),
            (
                "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
                &["g1", "g2"],
            ),
        ]);
        let id = AttributeMapping::default()
            .identity("nameid-1", false, r, None, vec![])
            .unwrap();
        assert_eq!(id.subject, "nameid-1");
        assert_eq!(id.email.as_deref(), Some("a@contoso.com"));
        assert_eq!(id.given_name.as_deref(), Some("Ada"));
        assert_eq!(id.family_name.as_deref(), Some("Lovelace"));
        assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(id.groups, vec!["g1", "g2"]);
    }

    #[test]
    fn shibboleth_oids_map() {
        let r = raw(&[
            ("urn:oid:0.9.2342.19200300.100.1.3", &["b@uni.edu"]),
            ("urn:oid:2.5.4.42", &["Bo"]),
            ("urn:oid:2.5.4.4", &["Ek"]),
            ("urn:oid:2.16.840.1.113730.3.1.241", &["Bo Ek"]),
            ("urn:oid:1.3.6.1.4.1.5923.1.5.1.1", &["staff"]),
        ]);
        let id = AttributeMapping::default()
            .identity("x", false, r, None, vec![])
            .unwrap();
        assert_eq!(id.email.as_deref(), Some("b@uni.edu"));
        assert_eq!(id.name.as_deref(), Some("Bo Ek"));
        assert_eq!(id.given_name.as_deref(), Some("Bo"));
        assert_eq!(id.family_name.as_deref(), Some("Ek"));
        assert_eq!(id.groups, vec!["staff"]);
    }

    #[test]
    fn transient_name_id_takes_a_stable_attribute_or_nothing() {
        let m = AttributeMapping::default();
        let eppn = raw(&[
            ("urn:oid:1.3.6.1.4.1.5923.1.1.1.6", &["bo@uni.edu"]),
            ("mail", &["b@uni.edu"]),
        ]);
        let id = m.identity_without_name_id(eppn, None, vec![]).unwrap();
        assert_eq!(id.subject, "bo@uni.edu");
        assert_eq!(id.email.as_deref(), Some("b@uni.edu"));
        let entra = raw(&[(
            "http://schemas.microsoft.com/identity/claims/objectidentifier",
            &["oid-1"],
        )]);
        assert_eq!(
            m.identity_without_name_id(entra, None, vec![]).unwrap().subject,
            "oid-1"
        );
        let only_mail = raw(&[("email", &["c@x.test"])]);
        assert_eq!(
            m.identity_without_name_id(only_mail, None, vec![]).unwrap().subject,
            "c@x.test"
        );
        assert!(m
            .identity_without_name_id(raw(&[("givenName", &["D"])]), None, vec![])
            .is_none());
        let configured = AttributeMapping {
            subject: Some(OneOrMany::One("employeeNumber".into())),
            ..Default::default()
        };
        let r = raw(&[("uid", &["u1"]), ("employeeNumber", &["42"])]);
        assert_eq!(
            configured.identity_without_name_id(r, None, vec![]).unwrap().subject,
            "42"
        );
        assert!(configured
            .identity_without_name_id(raw(&[("uid", &["u1"])]), None, vec![])
            .is_none());
    }

    #[test]
    fn configured_names_win_and_subject_attribute_is_required() {
        let r = raw(&[("mail", &["m@x.test"]), ("corpMail", &["c@x.test"]), ("oid", &["42"])]);
        let m = AttributeMapping {
            email: Some(OneOrMany::One("corpMail".into())),
            subject: Some(OneOrMany::Many(vec!["oid".into()])),
            ..Default::default()
        };
        let id = m.identity("n", true, r.clone(), None, vec![]).unwrap();
        assert_eq!(id.email.as_deref(), Some("c@x.test"));
        assert_eq!(id.subject, "42");
        let m2 = AttributeMapping {
            subject: Some(OneOrMany::One("absent".into())),
            ..Default::default()
        };
        assert!(m2.identity("n", true, r, None, vec![]).is_none());
    }
}
