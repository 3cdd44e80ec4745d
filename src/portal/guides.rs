//! Short per-IdP instructions and plain-language explanations of setup
//! errors and sign-in reason codes, for the setup portal.

/// An identity provider the portal has instructions for.
pub struct Idp {
    /// The value in forms and URLs.
    pub key: &'static str,
    /// The product's name.
    pub name: &'static str,
    /// Where to create a SAML application, step by step.
    pub saml: &'static [&'static str],
    /// Where to create an OIDC application, step by step.
    pub oidc: &'static [&'static str],
}

/// Every IdP the portal knows, generic last.
pub const IDPS: &[Idp] = &[
    Idp {
        key: "okta",
        name: "Okta",
        saml: &[
            "In the Okta Admin Console, open Applications > Applications > Create App Integration and choose SAML 2.0.",
            "Enter the ACS URL below as \"Single sign-on URL\" (keep \"Use this for Recipient URL and Destination URL\" checked) and the SP entity ID as \"Audience URI (SP Entity ID)\".",
            "Set \"Name ID format\" to EmailAddress and \"Application username\" to Email; add the attribute statements email, firstName and lastName.",
            "Assign the application to the people or groups who should sign in, then open the Sign On tab and copy the \"Metadata URL\" (or download the metadata).",
        ],
        oidc: &[
            "In the Okta Admin Console, open Applications > Applications > Create App Integration, choose OIDC and \"Web Application\".",
            "Add the redirect URI below as a \"Sign-in redirect URI\"; grant type Authorization Code only.",
            "Assign the application, then copy the Client ID and Client secret; the issuer is https://<your-okta-domain> (or your authorization server's issuer).",
        ],
    },
    Idp {
        key: "entra",
        name: "Microsoft Entra ID",
        saml: &[
            "In the Entra admin center, open Enterprise applications > New application > Create your own application (\"Integrate any other application\").",
            "Under Single sign-on choose SAML; in Basic SAML Configuration enter the SP entity ID as \"Identifier (Entity ID)\" and the ACS URL as \"Reply URL\".",
            "Keep the default claims (emailaddress, givenname, surname, name); the signing option \"Sign SAML response and assertion\" with SHA-256 works.",
            "Assign users and groups, then copy \"App Federation Metadata Url\" from SAML Certificates.",
        ],
        oidc: &[
            "In the Entra admin center, open App registrations > New registration; add the redirect URI below as a \"Web\" redirect URI.",
            "Under Certificates & secrets create a client secret and copy its value.",
            "The issuer is https://login.microsoftonline.com/<tenant-id>/v2.0; the client ID is the \"Application (client) ID\".",
        ],
    },
    Idp {
        key: "google",
        name: "Google Workspace",
        saml: &[
            "In the Google Admin console, open Apps > Web and mobile apps > Add app > Add custom SAML app.",
            "Download the IdP metadata on the \"Google Identity Provider details\" page (you will upload it in step 3).",
            "Enter the ACS URL and the SP entity ID below as \"ACS URL\" and \"Entity ID\"; Name ID format EMAIL, Name ID Basic Information > Primary email.",
            "Map the attributes First name, Last name and Primary email, then turn the app on for the right organizational units.",
        ],
        oidc: &[
            "In the Google Cloud console, open APIs & Services > Credentials > Create credentials > OAuth client ID, type \"Web application\".",
            "Add the redirect URI below as an \"Authorized redirect URI\" and copy the client ID and secret; the issuer is https://accounts.google.com.",
        ],
    },
    Idp {
        key: "adfs",
        name: "Microsoft AD FS",
        saml: &[
            "In AD FS Management, open Relying Party Trusts > Add Relying Party Trust (claims aware) and import the SP metadata URL below (or enter the data manually).",
            "If entered manually: the ACS URL below is a SAML 2.0 WebSSO endpoint and the SP entity ID is the relying party trust identifier; choose SHA-256.",
            "Add a claim issuance rule \"Send LDAP Attributes as Claims\": E-Mail-Addresses → E-Mail Address and Name ID, Given-Name → Given Name, Surname → Surname.",
            "Your IdP metadata is at https://<adfs-host>/FederationMetadata/2007-06/FederationMetadata.xml.",
        ],
        oidc: &[
            "In AD FS Management, open Application Groups > Add Application Group > Server application accessing a web API.",
            "Add the redirect URI below, generate a shared secret, and use https://<adfs-host>/adfs as the issuer.",
        ],
    },
    Idp {
        key: "pingone",
        name: "PingOne",
        saml: &[
            "In the PingOne admin console, open Applications > Add Application > SAML Application.",
            "Choose \"Manually enter\": the ACS URL below as \"ACS URLs\" and the SP entity ID as \"Entity ID\"; signing with RSA_SHA256.",
            "Map the attribute email (and given_name, family_name), enable the application, then copy the \"IdP Metadata URL\" from its Configuration tab.",
        ],
        oidc: &[
            "In the PingOne admin console, open Applications > Add Application > OIDC Web App.",
            "Add the redirect URI below, enable the application and copy the client ID, client secret and issuer (https://auth.pingone.<region>/<environment-id>/as).",
        ],
    },
    Idp {
        key: "jumpcloud",
        name: "JumpCloud",
        saml: &[
            "In the JumpCloud admin portal, open SSO Applications > Add New Application > Custom Application, and choose \"Manage Single Sign-On (SSO)\" with SAML.",
            "Enter the SP entity ID below as \"SP Entity ID\" and the ACS URL as \"ACS URLs\"; set \"IdP Entity ID\" to a value of your choice; SAMLSubject NameID: email.",
            "Add the attributes email, firstname and lastname, bind user groups, save, then export the IdP metadata.",
        ],
        oidc: &[
            "In the JumpCloud admin portal, open SSO Applications > Add New Application > Custom Application with OIDC.",
            "Add the redirect URI below, save, copy the client ID and secret; the issuer is https://oauth.id.jumpcloud.com/.",
        ],
    },
    Idp {
        key: "generic",
        name: "Another SAML or OIDC identity provider",
        saml: &[
            "Create a SAML 2.0 service provider (relying party) in your IdP, or import the SP metadata URL below.",
            "ACS URL (HTTP-POST binding) and SP entity ID (audience) are below; sign responses or assertions with RSA-SHA256.",
            "Send the person's email address as NameID or an email attribute, then export the IdP metadata.",
        ],
        oidc: &[
            "Register a confidential web client with the authorization code flow in your IdP.",
            "Add the redirect URI below; then note the issuer (its /.well-known/openid-configuration must be reachable over https), the client ID and the client secret.",
        ],
    },
];

/// The IdP with `key`, if known.
pub fn idp(key: &str) -> Option<&'static Idp> {
    IDPS.iter().find(|i| i.key == key)
}

/// A setup error (the field and the setup code's message) as a sentence that
/// says what is wrong and how to fix it.
pub fn setup_error_sentence(field: &str, message: &str) -> String {
    let m = message.to_ascii_lowercase();
    let fix = if m.contains("expired") {
        "The signing certificate in this metadata has expired. In your IdP, create (or activate) a new signing certificate, then download the metadata again and paste it here."
    } else if m.contains("saml.metadata_too_large") {
        "This document is far larger than one IdP's metadata (over 256 KiB): it is probably a federation's. Export the metadata of your one application in your IdP and use that."
    } else if m.contains("no idp signing certificate") || m.contains("no signing certificate") {
        "The metadata contains no signing certificate. Export the IdP metadata (not the SP metadata), which has a KeyDescriptor with use=\"signing\", and paste it here."
    } else if m.contains("singlesignonservice") && m.contains("binding") {
        "The metadata offers no single sign-on endpoint with the HTTP-Redirect or HTTP-POST binding. Enable one of these bindings in your IdP (SOAP and Artifact are not supported) and export the metadata again."
    } else if field == "issuer" && (m.contains("discovery") || m.contains("outbound.")) {
        "Portcullis could not download the issuer's discovery document. Check that the issuer URL is public (reachable from the internet over https) and that <issuer>/.well-known/openid-configuration opens in a browser."
    } else if m.contains("could not fetch") || m.contains("unreachable") || m.contains("timed out") {
        "Portcullis could not download the metadata from that URL. Check that the URL is public (reachable from the internet over https) and returns the XML, or download the file and upload it instead."
    } else if m.contains("entityid") || m.contains("entity id") {
        "The metadata does not describe the identity provider we expected (the entity ID does not match). Check that you copied the metadata of the right application, or paste the single IdP's metadata."
    } else if m.contains("sha1") || m.contains("sha-1") {
        "Your IdP signs with SHA-1, which is no longer safe. Switch the application's signing algorithm to RSA-SHA256 in your IdP, then export the metadata again."
    } else if m.contains("https") {
        "This address must use https. Use the https address your IdP shows."
    } else if m.contains("not a url") {
        "This is not a complete web address. Paste the full URL, starting with https://."
    } else if field == "metadata_xml" {
        "The metadata could not be read. Paste the complete XML document your IdP exports (it starts with <EntityDescriptor or <md:EntityDescriptor)."
    } else if field == "issuer" {
        "Portcullis could not use this issuer. Check that https://<issuer>/.well-known/openid-configuration opens in a browser and names the same issuer."
    } else if field == "client_id" || field == "client_secret" {
        "Copy the client ID and client secret exactly as your IdP shows them."
    } else {
        "Check the value and try again."
    };
    format!("{} ({field}: {message})", fix)
}

/// A sign-in reason code in words, and how to fix it.
pub fn reason_in_words(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "saml.signature_invalid" => (
            "The response's signature does not match the certificate in the metadata you gave.",
            "Your IdP signs with another certificate than the one in the metadata: download the IdP's current metadata and register it again, or activate the certificate the metadata names.",
        ),
        "saml.unsigned" => (
            "The response was not signed.",
            "Set your IdP to sign the SAML response or the assertion (RSA-SHA256).",
        ),
        "saml.signature_algorithm_not_allowed" | "saml.digest_algorithm_not_allowed" => (
            "The response was signed with an algorithm that is not allowed (such as SHA-1).",
            "Switch the application's signing algorithm to RSA-SHA256 in your IdP.",
        ),
        "saml.audience_mismatch" => (
            "The assertion is meant for another service provider (audience).",
            "Set the SP entity ID (Audience URI) in your IdP exactly to the value shown in step 2.",
        ),
        "saml.destination_mismatch" | "saml.recipient_mismatch" => (
            "The response was sent to another address than this connection's ACS URL.",
            "Set the ACS URL (Reply URL, Single sign-on URL) in your IdP exactly to the value shown in step 2.",
        ),
        "saml.issuer_mismatch" => (
            "The response comes from another IdP than the one in the metadata.",
            "Register the metadata of the IdP application that actually signs the users in.",
        ),
        "saml.expired" | "saml.not_yet_valid" | "saml.issue_instant_too_old" | "saml.issue_instant_in_future" => (
            "The assertion is outside its validity window.",
            "Check that your IdP's server clock is correct (NTP) and try again.",
        ),
        "saml.authn_instant_invalid" => (
            "The IdP dated the person's authentication (AuthnInstant) before 1970.",
            "Check your IdP's server clock and how it writes the AuthnInstant of its assertions.",
        ),
        "saml.status_not_success" => (
            "The IdP answered with an error instead of a sign-in.",
            "Check in your IdP that the user is assigned to the application.",
        ),
        "callback.connection_not_active" | "authorize.connection_not_active" => (
            "The connection is not active yet, or was disabled.",
            "Finish the test in the setup portal and activate the connection.",
        ),
        "login.user_disabled" | "login.user_inactive" => (
            "The user's account is disabled or was removed for this application.",
            "Ask the application's operator to enable the user.",
        ),
        "login.email_not_vouched" => (
            "The IdP says the email address is verified, but it is not in one of your organization's verified domains, so email_verified is false.",
            "Verify the address's domain for your organization (ask the application's operator), or leave it: the sign-in works, apps just do not treat the address as verified.",
        ),
        "login.email_not_plain" => (
            "The IdP says the email address is verified, but it carries a space, a control character or a trailing dot, so email_verified is false.",
            "Correct the user's email address in your IdP.",
        ),
        "login.email_other_connection" => (
            "The email address's domain is assigned to another connection of your organization, so this one's word that it is verified is not passed on: email_verified is false.",
            "Sign in such users through the connection the domain is assigned to, or ask the application's operator to assign the domain to this connection too.",
        ),
        "login.mfa_required" => (
            "Your organization requires multi-factor authentication, and the IdP's answer did not show it.",
            "Make the application in your IdP require MFA, or have it report the method (SAML AuthnContextClassRef, OIDC acr/amr).",
        ),
        "login.auth_too_old" => (
            "The application asked for a fresh sign-in, and the IdP reused an older one.",
            "Let the IdP honour ForceAuthn (SAML) or prompt=login / max_age (OIDC).",
        ),
        "login.not_the_hinted_user" => (
            "The application asked for one user, and the person signed in at the IdP as another.",
            "Sign out of the IdP, or sign in there as the user the application expects.",
        ),
        "callback.browser_mismatch" => (
            "The sign-in finished in another browser than the one that started it.",
            "Start the sign-in again from the application, in one browser.",
        ),
        "saml.encryption_required" => (
            "The assertion was not encrypted, but this connection requires encryption.",
            "Enable assertion encryption in your IdP with the SP certificate from the SP metadata.",
        ),
        "identity.subject_empty" | "identity.subject_too_long" => (
            "The IdP's identifier for the user is empty or longer than 1,024 bytes.",
            "Map the subject to a stable, short identifier in your IdP (a persistent NameID, an object id or the OIDC sub).",
        ),
        "identity.email_too_long"
        | "identity.name_too_long"
        | "identity.too_many_groups"
        | "identity.claim_too_long" => (
            "The IdP sent a value larger than a sign-in may carry (an email over 320 bytes, a name over 1,024 bytes, more than 1,000 groups or 64 KiB of them, or an oversized acr, session index or amr).",
            "Check the attribute or claim mapping in your IdP: send the user's own values, and filter the groups to the ones the application needs.",
        ),
        _ if reason.starts_with("oidc.") => (
            "The OpenID Connect answer failed a check.",
            "Check the issuer, client ID, client secret and redirect URI in your IdP against step 2.",
        ),
        _ => (
            "The sign-in failed one of Portcullis's checks.",
            "Quote the reason code to the application's support team.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_become_sentences_with_a_fix() {
        let s = setup_error_sentence("metadata_xml", "the metadata has no IdP signing certificate");
        assert!(s.starts_with("The metadata contains no signing certificate."), "{s}");
        let s = setup_error_sentence("metadata_url", "could not fetch the metadata: connection refused");
        assert!(s.contains("could not download"), "{s}");
        let s = setup_error_sentence(
            "metadata_xml",
            "the metadata has no SingleSignOnService with the HTTP-Redirect or HTTP-POST binding",
        );
        assert!(s.contains("HTTP-Redirect or HTTP-POST binding"), "{s}");
        let s = setup_error_sentence(
            "metadata_xml",
            "the metadata is larger than 256 KiB, far more than one IdP's metadata needs (saml.metadata_too_large)",
        );
        assert!(
            s.starts_with("This document is far larger than one IdP's metadata"),
            "{s}"
        );
        let s = setup_error_sentence(
            "metadata_url",
            "every signing certificate in the metadata has expired (metadata.no_usable_certificate)",
        );
        assert!(
            s.starts_with("The signing certificate in this metadata has expired."),
            "{s}"
        );
    }

    #[test]
    fn every_idp_has_instructions_for_both_protocols() {
        for idp in IDPS {
            assert!(!idp.saml.is_empty() && !idp.oidc.is_empty(), "{}", idp.key);
        }
        let (what, fix) = reason_in_words("saml.signature_invalid");
        assert!(what.contains("signature") && fix.contains("metadata"));
    }

    #[test]
    fn identities_over_the_bounds_are_explained_with_a_fix() {
        for reason in [
            "identity.subject_empty",
            "identity.subject_too_long",
            "identity.email_too_long",
            "identity.name_too_long",
            "identity.too_many_groups",
            "identity.claim_too_long",
        ] {
            let (what, fix) = reason_in_words(reason);
            assert!(what.contains("IdP") && fix.contains("IdP"), "{reason}");
        }
    }
}
