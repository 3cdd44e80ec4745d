//! A wrapper that keeps secrets out of logs and `Debug` output.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret string (client secret, private key, admin token).
///
/// `Debug` and `Display` print `[redacted]`; the value is reached only
/// through [`Secret::expose`], which makes every use easy to find.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in constant time.
    pub fn matches(&self, other: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Stands in for a secret field in a hand-written `Debug`: prints
/// `[redacted]`, so `{:?}` of a struct that holds a code, a token or a seed
/// says whether it is there, never what it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Redacted;

impl Redacted {
    /// `Some(Redacted)` when `value` is there.
    pub fn of<T>(value: &Option<T>) -> Option<Redacted> {
        value.as_ref().map(|_| Redacted)
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use crate::broker::second_factor::{EnrolView, MfaPage, Step};
    use crate::ids::{ConnectionId, TenantId};
    use crate::provider::forward::ForwardRequest;
    use crate::provider::grants::{ClientCredentials, TokenRequest, TokenResponse};

    const S: &str = "s3cret-value-0123456789";

    fn enrol_view() -> EnrolView {
        EnrolView {
            secret: S.into(),
            uri: format!("otpauth://totp/x?secret={S}"),
            qr_svg: format!("<svg>{S}</svg>"),
        }
    }

    /// `{:?}` of anything that holds a code, a token, a verifier, a seed or
    /// a handle (an error message, a test's failure, a future `?value` in a
    /// log line) shows whether it is there, never what it is.
    #[test]
    fn debug_of_what_holds_a_code_token_or_seed_shows_none_of_them() {
        let uri = format!("/p?key={S}");
        let page = MfaPage {
            status: 200,
            tenant: TenantId::parse("acme").unwrap(),
            connection: ConnectionId::parse("corp").unwrap(),
            tenant_name: "Acme".into(),
            handle: S.into(),
            who: "ada".into(),
            step: Step::Enrol,
            enrol: Some(enrol_view()),
            recovery_codes: vec![S.into()],
            error: None,
            app: "https://app.example/cb".into(),
            self_service: false,
            totp: true,
            passkey: false,
            passkeys_enabled: false,
        };
        let pending = crate::broker::PendingLogin {
            tenant: TenantId::parse("acme").unwrap(),
            connection: ConnectionId::parse("corp").unwrap(),
            request: crate::broker::authorize::AuthRequest::minimal("app", "https://app.example/cb", None, &["openid"]),
            connector_state: serde_json::json!({ "pkce_verifier": S, "nonce": S }),
            browser_binding: None,
            started_at: 0,
            incarnation: None,
            test: None,
        };
        let shown = [
            format!(
                "{:?}",
                TokenRequest {
                    grant_type: Some("authorization_code".into()),
                    code: Some(S.into()),
                    code_verifier: Some(S.into()),
                    refresh_token: Some(S.into()),
                    subject_token: Some(S.into()),
                    actor_token: Some(S.into()),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ClientCredentials::Secret {
                    id: "app".into(),
                    secret: S.into()
                }
            ),
            format!(
                "{:?}",
                TokenResponse {
                    access_token: S.into(),
                    token_type: "Bearer",
                    expires_in: 60,
                    id_token: Some(S.into()),
                    refresh_token: Some(S.into()),
                    scope: "openid".into(),
                    issued_token_type: None,
                }
            ),
            format!(
                "{:?}",
                ForwardRequest {
                    token: Some(S),
                    original_uri: Some(&uri),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                crate::mfa::Enrolment {
                    sub: "u".into(),
                    secret: S.into(),
                    created_at: 0,
                    confirmed_at: None,
                    recovery: Vec::new(),
                    flow: None,
                }
            ),
            format!("{:?}", enrol_view()),
            format!("{page:?}"),
            format!("{pending:?}"),
            format!(
                "{:?}",
                crate::upstream::BeginLogin {
                    redirect: crate::upstream::UpstreamRedirect::Redirect(
                        url::Url::parse("https://idp.example/auth").unwrap()
                    ),
                    state: serde_json::json!({ "pkce_verifier": S }),
                }
            ),
            format!(
                "{:?}",
                crate::broker::Outcome::SecondFactor {
                    url: url::Url::parse("https://gw.example/mfa/acme/corp").unwrap(),
                    secret: super::Secret::new(S),
                }
            ),
        ];
        for text in &shown {
            assert!(!text.contains(S), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
        let account = crate::local::LocalUser {
            email: format!("{S}@example.com"),
            subject: "subj".into(),
            status: crate::local::AccountStatus::Confirmed,
            disabled: false,
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${S}"),
            given_name: None,
            family_name: None,
            created_at: 0,
            updated_at: 0,
            migrated: false,
            contested: false,
            incarnation: None,
            signed_up_in: None,
        };
        let text = format!("{account:?}");
        assert!(!text.contains(S) && !text.contains("argon2"), "{text}");
        // What is not secret is still shown.
        assert!(shown[0].contains("authorization_code"), "{}", shown[0]);
        assert!(shown[3].contains("/p"), "{}", shown[3]);
    }
}
