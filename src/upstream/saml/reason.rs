//! The reasons a SAML response is refused: one enum, so every decision on a
//! reason (the sentence a person sees, which rejections may try another key)
//! is an exhaustive match and the stable code is spelled once.

/// Why a SAML response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamlReason {
    /// `saml.assertion_count`.
    AssertionCount,
    /// `saml.audience_mismatch`.
    AudienceMismatch,
    /// `saml.audience_missing`.
    AudienceMissing,
    /// `saml.authn_instant_in_future`.
    AuthnInstantInFuture,
    /// `saml.authn_instant_invalid`: before 1970-01-01, which no
    /// authentication is; as `auth_time` it would be negative.
    AuthnInstantInvalid,
    /// `saml.condition_unknown`.
    ConditionUnknown,
    /// `saml.decryption_failed`.
    DecryptionFailed,
    /// `saml.destination_mismatch`.
    DestinationMismatch,
    /// `saml.digest_algorithm_not_allowed`.
    DigestAlgorithmNotAllowed,
    /// `saml.dtd_forbidden`.
    DtdForbidden,
    /// `saml.duplicate_id`.
    DuplicateId,
    /// `saml.encryption_required`.
    EncryptionRequired,
    /// `saml.encryption_unsupported`.
    EncryptionUnsupported,
    /// `saml.expired`.
    Expired,
    /// `saml.in_response_to_mismatch`.
    InResponseToMismatch,
    /// `saml.issue_instant_in_future`.
    IssueInstantInFuture,
    /// `saml.issue_instant_too_old`.
    IssueInstantTooOld,
    /// `saml.issuer_mismatch`.
    IssuerMismatch,
    /// `saml.key_transport_not_allowed`.
    KeyTransportNotAllowed,
    /// `saml.malformed`.
    Malformed,
    /// `saml.missing_response`.
    MissingResponse,
    /// `saml.not_yet_valid`.
    NotYetValid,
    /// `saml.recipient_mismatch`.
    RecipientMismatch,
    /// `saml.replay`.
    Replay,
    /// `saml.signature_algorithm_not_allowed`.
    SignatureAlgorithmNotAllowed,
    /// `saml.signature_invalid`.
    SignatureInvalid,
    /// `saml.status_not_success`.
    StatusNotSuccess,
    /// `saml.subject_confirmation_expiry_missing`.
    SubjectConfirmationExpiryMissing,
    /// `saml.subject_confirmation_missing`.
    SubjectConfirmationMissing,
    /// `saml.subject_missing`.
    SubjectMissing,
    /// `saml.too_large`.
    TooLarge,
    /// `saml.transient_subject`.
    TransientSubject,
    /// `saml.unsigned`.
    Unsigned,
    /// `saml.unsolicited_in_response_to`.
    UnsolicitedInResponseTo,
    /// `saml.unsolicited_not_allowed`.
    UnsolicitedNotAllowed,
}

impl SamlReason {
    /// The stable reason code (logs, metrics, the portal).
    pub fn code(self) -> &'static str {
        match self {
            Self::AssertionCount => "saml.assertion_count",
            Self::AudienceMismatch => "saml.audience_mismatch",
            Self::AudienceMissing => "saml.audience_missing",
            Self::AuthnInstantInFuture => "saml.authn_instant_in_future",
            Self::AuthnInstantInvalid => "saml.authn_instant_invalid",
            Self::ConditionUnknown => "saml.condition_unknown",
            Self::DecryptionFailed => "saml.decryption_failed",
            Self::DestinationMismatch => "saml.destination_mismatch",
            Self::DigestAlgorithmNotAllowed => "saml.digest_algorithm_not_allowed",
            Self::DtdForbidden => "saml.dtd_forbidden",
            Self::DuplicateId => "saml.duplicate_id",
            Self::EncryptionRequired => "saml.encryption_required",
            Self::EncryptionUnsupported => "saml.encryption_unsupported",
            Self::Expired => "saml.expired",
            Self::InResponseToMismatch => "saml.in_response_to_mismatch",
            Self::IssueInstantInFuture => "saml.issue_instant_in_future",
            Self::IssueInstantTooOld => "saml.issue_instant_too_old",
            Self::IssuerMismatch => "saml.issuer_mismatch",
            Self::KeyTransportNotAllowed => "saml.key_transport_not_allowed",
            Self::Malformed => "saml.malformed",
            Self::MissingResponse => "saml.missing_response",
            Self::NotYetValid => "saml.not_yet_valid",
            Self::RecipientMismatch => "saml.recipient_mismatch",
            Self::Replay => "saml.replay",
            Self::SignatureAlgorithmNotAllowed => "saml.signature_algorithm_not_allowed",
            Self::SignatureInvalid => "saml.signature_invalid",
            Self::StatusNotSuccess => "saml.status_not_success",
            Self::SubjectConfirmationExpiryMissing => "saml.subject_confirmation_expiry_missing",
            Self::SubjectConfirmationMissing => "saml.subject_confirmation_missing",
            Self::SubjectMissing => "saml.subject_missing",
            Self::TooLarge => "saml.too_large",
            Self::TransientSubject => "saml.transient_subject",
            Self::Unsigned => "saml.unsigned",
            Self::UnsolicitedInResponseTo => "saml.unsolicited_in_response_to",
            Self::UnsolicitedNotAllowed => "saml.unsolicited_not_allowed",
        }
    }

    /// A sentence for the person in the browser.
    pub fn message(self) -> &'static str {
        match self {
            Self::AssertionCount | Self::AudienceMismatch | Self::AuthnInstantInvalid | Self::AudienceMissing | Self::ConditionUnknown | Self::DecryptionFailed | Self::DestinationMismatch | Self::DigestAlgorithmNotAllowed | Self::DtdForbidden | Self::DuplicateId | Self::EncryptionRequired | Self::EncryptionUnsupported | Self::IssuerMismatch | Self::KeyTransportNotAllowed | Self::Malformed | Self::MissingResponse | Self::RecipientMismatch | Self::SignatureAlgorithmNotAllowed | Self::SignatureInvalid | Self::StatusNotSuccess | Self::SubjectConfirmationExpiryMissing | Self::SubjectConfirmationMissing | Self::TooLarge | Self::Unsigned => {
                "The sign-in response from your identity provider could not be accepted."
            }
            Self::AuthnInstantInFuture | Self::Expired | Self::IssueInstantInFuture | Self::IssueInstantTooOld | Self::NotYetValid => {
                "The sign-in response from your identity provider has expired or is not valid yet. Please try again."
            }
            Self::InResponseToMismatch | Self::UnsolicitedInResponseTo | Self::UnsolicitedNotAllowed => {
                "This sign-in was not started here. Please start the sign-in from the application."
            }
            Self::Replay => {
                "This sign-in response was already used. Please sign in again."
            }
            Self::SubjectMissing | Self::TransientSubject => {
                "Your identity provider did not send a stable identifier for your account. Please contact your administrator."
            }
        }
    }
}
