//! Passwords of local accounts: argon2id hashing (bounded concurrency, on
//! the blocking pool), the per-connection policy, and the shipped list of
//! breached passwords.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// The longest password accepted (characters): hashing cost is bounded, and
/// nobody types more.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// argon2id hashing with the configured parameters.
pub struct Hasher {
    params: Params,
    permits: Semaphore,
    dummy: String,
}

/// A failure of the hashing machinery itself (not a wrong password).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl Hasher {
    /// Builds the hasher; `max_concurrent` bounds the memory in use to
    /// `memory_kib × max_concurrent`. Computes the dummy hash that unknown
    /// emails are checked against (so they cost the same time).
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32, max_concurrent: usize) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None).map_err(|e| HashError(e.to_string()))?;
        let mut hasher = Self {
            params,
            permits: Semaphore::new(max_concurrent.max(1)),
            dummy: String::new(),
        };
        hasher.dummy = hasher.hash_now(&crate::tokens::random_token(18))?;
        Ok(hasher)
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn hash_now(&self, password: &str) -> Result<String, HashError> {
        let mut salt = [0u8; 16];
        openssl::rand::rand_bytes(&mut salt).map_err(|e| HashError(e.to_string()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
        self.argon()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string()))
    }

    /// Hashes `password` (PHC string `$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub async fn hash(self: &Arc<Self>, password: &str) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|e| HashError(e.to_string()))?;
        let me = self.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || me.hash_now(&password))
            .await
            .map_err(|e| HashError(e.to_string()))?
    }

    /// Checks `password` against `phc` (with the parameters recorded in it),
    /// or against the dummy hash when `phc` is `None`, which then always
    /// answers `false` after the same work. A hash made with earlier,
    /// cheaper parameters (until its owner's next sign-in re-hashes it)
    /// and a wrong password is then also checked against the dummy, at the
    /// current parameters: otherwise raising the parameters would let the
    /// time of a wrong password tell the accounts made before from
    /// addresses with no account. The same work rather than a wait padded
    /// to an estimate, so the two take alike under any load.
    pub async fn verify(self: &Arc<Self>, password: &str, phc: Option<&str>) -> Result<bool, HashError> {
        let _permit = self.permits.acquire().await.map_err(|e| HashError(e.to_string()))?;
        let known = phc.is_some();
        let outdated = phc.is_some_and(|p| self.outdated(p));
        let phc = phc.unwrap_or(&self.dummy).to_owned();
        let password = password.to_owned();
        let me = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let check = |phc: &str| {
                let parsed = PasswordHash::new(phc).map_err(|e| HashError(e.to_string()))?;
                Ok::<bool, HashError>(me.argon().verify_password(password.as_bytes(), &parsed).is_ok())
            };
            let ok = check(&phc)?;
            if outdated && !ok {
                // Its answer is `false` whatever it is; only its work counts.
                check(&me.dummy)?;
            }
            Ok::<bool, HashError>(ok)
        })
        .await
        .map_err(|e| HashError(e.to_string()))??;
        Ok(ok && known)
    }

    /// Whether `phc` was made with other parameters than the current ones
    /// (re-hashed at the next successful sign-in).
    pub fn outdated(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return true;
        };
        let Ok(p) = Params::try_from(&parsed) else {
            return true;
        };
        parsed.algorithm.as_str() != "argon2id"
            || p.m_cost() != self.params.m_cost()
            || p.t_cost() != self.params.t_cost()
            || p.p_cost() != self.params.p_cost()
    }
}

/// The password policy of a local connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    /// The fewest characters (8 to 128).
    pub min_length: usize,
    /// How many of the four classes (lower case, upper case, digits, other)
    /// a password must use (0 to 4).
    pub min_classes: usize,
    /// Refuse passwords on the shipped breached-password list (always on
    /// unless set to false).
    pub refuse_breached: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 10,
            min_classes: 0,
            refuse_breached: true,
        }
    }
}

/// Why a password was refused by the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyViolation {
    /// Shorter than `min_length`.
    TooShort,
    /// Longer than [`MAX_PASSWORD_CHARS`].
    TooLong,
    /// Fewer character classes than `min_classes`.
    TooFewClasses,
    /// On the breached-password list.
    Breached,
    /// Contains the local part of the account's email.
    ContainsEmail,
}

impl PolicyViolation {
    /// The stable reason code.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooShort => "local.password_too_short",
            Self::TooLong => "local.password_too_long",
            Self::TooFewClasses => "local.password_too_simple",
            Self::Breached => "local.password_breached",
            Self::ContainsEmail => "local.password_contains_email",
        }
    }
}

impl PasswordPolicy {
    /// Checks the policy's own values.
    pub fn check_settings(&self) -> Result<(), String> {
        if !(8..=128).contains(&self.min_length) {
            return Err("min_length must be between 8 and 128".into());
        }
        if self.min_classes > 4 {
            return Err("min_classes must be between 0 and 4".into());
        }
        Ok(())
    }

    /// Checks `password` for an account with `email`.
    pub fn check(&self, password: &str, email: &str) -> Result<(), PolicyViolation> {
        let chars = password.chars().count();
        if chars > MAX_PASSWORD_CHARS {
            return Err(PolicyViolation::TooLong);
        }
        if chars < self.min_length.max(8) {
            return Err(PolicyViolation::TooShort);
        }
        let classes = [
            password.chars().any(|c| c.is_lowercase()),
            password.chars().any(|c| c.is_uppercase()),
            password.chars().any(|c| c.is_ascii_digit()),
            password.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if classes < self.min_classes {
            return Err(PolicyViolation::TooFewClasses);
        }
        let lower = password.to_lowercase();
        let local = email.split('@').next().unwrap_or_default().to_lowercase();
        if local.chars().count() >= 4 && lower.contains(&local) {
            return Err(PolicyViolation::ContainsEmail);
        }
        if self.refuse_breached && breached(&lower) {
            return Err(PolicyViolation::Breached);
        }
        Ok(())
    }
}

/// The shipped list (`data/breached-passwords.txt`), compiled in.
const BREACHED: &str = include_str!("../../data/breached-passwords.txt");

fn breached_set() -> &'static HashSet<String> {
    static SET: OnceLock<HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        BREACHED
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_lowercase)
            .collect()
    })
}

/// Whether `lower` (already lower-cased) is on the breached list, as is or
/// with trailing digits and punctuation removed ("password1!" is "password").
pub fn breached(lower: &str) -> bool {
    let set = breached_set();
    let stripped = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    set.contains(lower) || (stripped.len() >= 4 && set.contains(stripped))
}

/// How many entries the shipped list has (for the documentation and tests).
pub fn breached_count() -> usize {
    breached_set().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_with_its_reason() {
        let p = PasswordPolicy {
            min_length: 10,
            min_classes: 3,
            refuse_breached: true,
        };
        let r = |pw: &str| p.check(pw, "jane.doe@acme.example").err().map(PolicyViolation::reason);
        assert_eq!(r("Short1!"), Some("local.password_too_short"));
        assert_eq!(r("alllowercaseletters"), Some("local.password_too_simple"));
        assert_eq!(r("Jane.Doe-2026!x"), Some("local.password_contains_email"));
        assert_eq!(r("Password123!"), Some("local.password_breached"));
        assert_eq!(r(&"Ab1!".repeat(70)), Some("local.password_too_long"));
        assert_eq!(r("Correct-Horse-Battery-9"), None);
        assert!(breached_count() > 3000);
    }

    /// The cost of the shipped parameters on this machine (run with
    /// `cargo test --release --lib argon2_cost -- --ignored --nocapture`).
    #[tokio::test]
    #[ignore]
    async fn argon2_cost_of_the_default_parameters() {
        let d = crate::config::local::LocalSettings::default();
        let h = Arc::new(Hasher::new(d.argon2_memory_kib, d.argon2_iterations, d.argon2_parallelism, 1).unwrap());
        let phc = h.hash("Correct-Horse-Battery-9").await.unwrap();
        let n = 20;
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            assert!(h.verify("Correct-Horse-Battery-9", Some(&phc)).await.unwrap());
        }
        println!(
            "argon2id m={} t={} p={}: {:?} per verification",
            d.argon2_memory_kib,
            d.argon2_iterations,
            d.argon2_parallelism,
            t0.elapsed() / n
        );
    }

    #[tokio::test]
    async fn argon2id_hashes_verify_and_unknown_accounts_never_match() {
        let h = Arc::new(Hasher::new(8192, 1, 1, 2).unwrap());
        let phc = h.hash("Correct-Horse-Battery-9").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{phc}");
        assert!(h.verify("Correct-Horse-Battery-9", Some(&phc)).await.unwrap());
        assert!(!h.verify("correct-horse-battery-9", Some(&phc)).await.unwrap());
        assert!(!h.verify("anything", None).await.unwrap());
        assert!(!h.outdated(&phc));
        let other = Arc::new(Hasher::new(16384, 1, 1, 1).unwrap());
        assert!(other.outdated(&phc));
        // Parameters come from the stored hash: an old hash still verifies.
        assert!(other.verify("Correct-Horse-Battery-9", Some(&phc)).await.unwrap());
    }
}
