//! Parsed identifiers, built once at the edge.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
pub struct InvalidId;

fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an identifier.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if valid_slug(s) { Ok(Self(s.to_owned())) } else { Err(InvalidId) }
            }
            /// The identifier as a string.
            pub fn as_str(&self) -> &str { &self.0 }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> { Self::parse(&s) }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String { id.0 }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
    };
}

slug_id!(
    /// A tenant (one customer of the SaaS), e.g. `acme`.
    TenantId
);
slug_id!(
    /// A connection (one upstream IdP of a tenant), e.g. `okta`.
    ConnectionId
);

/// Whether `s` is a well-formed client id: 1 to 128 characters of letters,
/// digits, `-`, `_` and `.`.
pub fn is_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_validated() {
        assert!(TenantId::parse("acme-1").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("Acme").is_err());
        assert!(TenantId::parse("-acme").is_err());
        assert!(TenantId::parse("a:b").is_err());
        assert!(TenantId::parse(&"a".repeat(65)).is_err());
    }
}
