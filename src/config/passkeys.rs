//! `[passkeys]`: WebAuthn passkeys of local accounts (second factor and
//! passwordless sign-in).

use super::ConfigProblem;
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

/// `[passkeys]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasskeySettings {
    /// Whether people may register and use passkeys
    /// (`PORTCULLIS_PASSKEYS_ENABLED`). Needs `server.public_url` to be
    /// https, or `http://localhost` for development: its host is the
    /// relying party id and its origin the only accepted origin.
    pub enabled: bool,
    /// The relying party name authenticators show; default "Portcullis".
    pub rp_name: Option<String>,
}

impl PasskeySettings {
    /// Applies `PORTCULLIS_PASSKEYS_ENABLED`.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>, problems: &mut Vec<ConfigProblem>) {
        if let Some(v) = env.get("PORTCULLIS_PASSKEYS_ENABLED") {
            match v.as_str() {
                "true" | "1" => self.enabled = true,
                "false" | "0" | "" => self.enabled = false,
                other => problems.push(ConfigProblem {
                    source: "PORTCULLIS_PASSKEYS_ENABLED".into(),
                    field: String::new(),
                    message: format!("expected true or false, found {other:?}"),
                }),
            }
        }
    }

    /// The relying party name.
    pub fn rp_name(&self) -> &str {
        self.rp_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("Portcullis")
    }

    /// Checks the values against the public URL; `bad(field, message)`
    /// records a problem.
    pub fn validate(&self, public_url: Option<&url::Url>, bad: &mut dyn FnMut(&str, String)) {
        if self.rp_name().chars().count() > 64 {
            bad("passkeys.rp_name", "must be at most 64 characters".into());
        }
        if !self.enabled {
            return;
        }
        if let Some(url) = public_url {
            if let Err(m) = relying_party(url) {
                bad("passkeys.enabled", m);
            }
        }
    }
}

/// Checks the public URL can serve passkeys: `Ok((rp_id, origin))`, or a
/// sentence saying why not.
pub fn relying_party(public_url: &Url) -> Result<(String, Url), String> {
    let host = match public_url.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(_) => {
            return Err(
                "passkeys need server.public_url to name its host by a domain name: browsers refuse an IP address as the WebAuthn relying party id (use http://localhost:PORT for development)"
                    .into(),
            )
        }
        None => return Err("server.public_url has no host".into()),
    };
    if public_url.scheme() != "https" && host != "localhost" {
        return Err(
            "passkeys need server.public_url to be https (or http://localhost for development): browsers offer WebAuthn only in a secure context"
                .into(),
        );
    }
    let origin = Url::parse(&public_url.origin().ascii_serialization())
        .map_err(|e| format!("server.public_url has no usable origin: {e}"))?;
    Ok((host, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(public_url: &str, enabled: bool) -> Vec<String> {
        let mut s = crate::config::Settings::default();
        s.server.public_url = public_url.into();
        s.passkeys.enabled = enabled;
        match s.validate("test") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect(),
        }
    }

    #[test]
    fn passkeys_refuse_to_start_without_https_or_localhost() {
        let bad = problems("http://127.0.0.1:8080", true);
        assert!(
            bad.iter()
                .any(|p| p.starts_with("passkeys.enabled") && p.contains("IP address")),
            "{bad:?}"
        );
        assert!(problems("http://localhost:8080", true)
            .iter()
            .all(|p| !p.starts_with("passkeys")));
        assert!(problems("https://login.example.com", true)
            .iter()
            .all(|p| !p.starts_with("passkeys")));
        // Off: nothing is asked of the public URL.
        assert!(problems("http://127.0.0.1:8080", false)
            .iter()
            .all(|p| !p.starts_with("passkeys")));
    }

    #[test]
    fn the_environment_switches_passkeys() {
        let mut s = PasskeySettings::default();
        let mut problems = Vec::new();
        let env = BTreeMap::from([("PORTCULLIS_PASSKEYS_ENABLED".to_owned(), "true".to_owned())]);
        s.apply_env(&env, &mut problems);
        assert!(s.enabled && problems.is_empty());
        let env = BTreeMap::from([("PORTCULLIS_PASSKEYS_ENABLED".to_owned(), "maybe".to_owned())]);
        s.apply_env(&env, &mut problems);
        assert_eq!(problems.len(), 1);
    }
}
