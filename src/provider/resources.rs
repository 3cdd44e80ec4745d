//! Resource servers (APIs): an identifier (the access token's `aud`) and the
//! scopes it defines. One registry for the whole platform, like apps.
//!
//! A scope name belongs to exactly one resource server: each name is
//! reserved with `put_if_absent` (`g:resources` / `scope:<name>`), so a
//! requested scope string maps to one API and an app allowed `billing:read`
//! can never be handed the same word at another API. The OIDC scopes
//! (`openid`, `email`, `profile`, `groups`, `offline_access`) are not API
//! scopes and cannot be defined by a resource server.

use crate::store::{Key, SharedStore, StoreError, StoreJson};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The scopes of OpenID Connect itself, which every app may ask for.
pub const OIDC_SCOPES: [&str; 5] = ["openid", "email", "profile", "groups", "offline_access"];

/// True for one of [`OIDC_SCOPES`].
pub fn is_oidc_scope(s: &str) -> bool {
    OIDC_SCOPES.contains(&s)
}

/// One scope a resource server defines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceScope {
    /// The scope name, as apps request it.
    pub name: String,
    /// What it lets an app do.
    #[serde(default)]
    pub description: String,
}

/// A resource server (an API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceServer {
    /// Its identifier: an absolute URI without fragment (RFC 8707), compared
    /// as an exact string; the `aud` of access tokens for it.
    pub identifier: String,
    /// Display name.
    pub name: String,
    /// The scopes it defines.
    pub scopes: Vec<ResourceScope>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl ResourceServer {
    /// True if this resource server defines `scope`.
    pub fn defines(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s.name == scope)
    }
}

/// Checks a resource server identifier: an absolute URI without fragment
/// (RFC 8707 §2), at most 255 characters.
pub fn check_identifier(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    let url = url::Url::parse(id).map_err(|e| format!("{id:?} is not an absolute URI ({e})"))?;
    if url.fragment().is_some() || id.contains('#') {
        return Err(format!("{id:?} must not contain a fragment"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{id:?} must not contain spaces"));
    }
    Ok(())
}

/// Checks a scope name a resource server defines: an RFC 6749 §3.3
/// scope-token of at most 128 characters, and not an OIDC scope.
pub fn check_scope_name(name: &str) -> Result<(), String> {
    let token_ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if !token_ok {
        return Err(format!(
            "{name:?} must be 1 to 128 printable ASCII characters without spaces, '\"' or '\\'"
        ));
    }
    if is_oidc_scope(name) {
        return Err(format!("{name:?} is an OpenID Connect scope, not an API scope"));
    }
    Ok(())
}

/// Checks a resource server's fields; shared by the admin API and the config file's
/// `[[resource_servers]]`. `scopes` are (name, description) pairs.
pub fn check_resource_server(
    identifier: &str,
    scopes: &[(String, String)],
) -> Result<Vec<ResourceScope>, (String, String)> {
    check_identifier(identifier).map_err(|m| ("identifier".to_owned(), m))?;
    let mut out: Vec<ResourceScope> = Vec::new();
    for (i, (name, description)) in scopes.iter().enumerate() {
        check_scope_name(name).map_err(|m| (format!("scopes[{i}].name"), m))?;
        if out.iter().any(|s| &s.name == name) {
            return Err((format!("scopes[{i}].name"), format!("{name:?} appears twice")));
        }
        if description.len() > 1024 {
            return Err((
                format!("scopes[{i}].description"),
                "must be at most 1024 characters".into(),
            ));
        }
        out.push(ResourceScope {
            name: name.clone(),
            description: description.clone(),
        });
    }
    Ok(out)
}

/// Why a resource server could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The identifier is taken.
    #[error("resource server {0} already exists")]
    Exists(String),
    /// A scope name already belongs to another resource server.
    #[error("scope {scope} is defined by {owner}")]
    ScopeTaken {
        /// Index of the scope in the request.
        index: usize,
        /// The scope.
        scope: String,
        /// The resource server that defines it.
        owner: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store-backed resource server registry.
#[derive(Clone)]
pub struct ResourceRegistry {
    store: SharedStore,
}

fn resource_key(identifier: &str) -> Key {
    // Hashed: identifiers are URIs, which may hold characters a key should not.
    Key::global(
        "resources",
        format!("resource:{}", crate::tokens::sha256_base64url(identifier.as_bytes())),
    )
}
fn scope_key(scope: &str) -> Key {
    Key::global(
        "resources",
        format!("scope:{}", crate::tokens::sha256_base64url(scope.as_bytes())),
    )
}
fn index_key() -> Key {
    Key::global("resources", "index")
}

impl ResourceRegistry {
    /// A registry over `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Registers a resource server; fails if the identifier or one of its
    /// scope names is taken, leaving nothing behind.
    pub async fn create(&self, rs: &ResourceServer) -> Result<(), ResourceError> {
        if !self
            .store
            .put_json_if_absent(&resource_key(&rs.identifier), rs, None)
            .await?
        {
            return Err(ResourceError::Exists(rs.identifier.clone()));
        }
        if let Err(e) = self.reserve_scopes(rs, &[]).await {
            self.release_scopes(rs, &[]).await;
            self.store.delete(&resource_key(&rs.identifier)).await?;
            return Err(e);
        }
        self.store.set_add(&index_key(), &rs.identifier, None).await?;
        Ok(())
    }

    /// Registers or replaces a resource server (declared in the config file).
    pub async fn put(&self, rs: &ResourceServer) -> Result<(), ResourceError> {
        let old = self.get(&rs.identifier).await?;
        let kept: Vec<String> = old
            .as_ref()
            .map(|o| o.scopes.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        if let Err(e) = self.reserve_scopes(rs, &kept).await {
            // Free the names this attempt reserved; the ones it already had stay.
            self.release_scopes(rs, &kept).await;
            return Err(e);
        }
        self.store.put_json(&resource_key(&rs.identifier), rs, None).await?;
        if let Some(old) = old {
            for s in old.scopes.iter().filter(|s| !rs.defines(&s.name)) {
                self.store.delete(&scope_key(&s.name)).await?;
            }
        }
        self.store.set_add(&index_key(), &rs.identifier, None).await?;
        Ok(())
    }

    /// Reserves every scope name of `rs` except those in `already_ours`.
    async fn reserve_scopes(&self, rs: &ResourceServer, already_ours: &[String]) -> Result<(), ResourceError> {
        for (index, s) in rs.scopes.iter().enumerate() {
            if already_ours.contains(&s.name) {
                continue;
            }
            let key = scope_key(&s.name);
            if !self.store.put_if_absent(&key, rs.identifier.as_bytes(), None).await? {
                let owner = self
                    .store
                    .get(&key)
                    .await?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if owner != rs.identifier {
                    return Err(ResourceError::ScopeTaken {
                        index,
                        scope: s.name.clone(),
                        owner,
                    });
                }
            }
        }
        Ok(())
    }

    /// Releases the scope names of `rs` that it owns, except `keep`.
    async fn release_scopes(&self, rs: &ResourceServer, keep: &[String]) {
        for s in rs.scopes.iter().filter(|s| !keep.contains(&s.name)) {
            let key = scope_key(&s.name);
            match self.store.get(&key).await {
                Ok(Some(owner)) if owner == rs.identifier.as_bytes() => {
                    if let Err(e) = self.store.delete(&key).await {
                        tracing::warn!(reason = "resources.release_failed", error = %e);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(reason = "resources.release_failed", error = %e),
            }
        }
    }

    /// Reads a resource server.
    pub async fn get(&self, identifier: &str) -> Result<Option<ResourceServer>, StoreError> {
        if identifier.is_empty() || identifier.len() > 255 {
            return Ok(None);
        }
        self.store.get_json(&resource_key(identifier)).await
    }

    /// The resource server that defines `scope`, if any.
    pub async fn owner_of(&self, scope: &str) -> Result<Option<String>, StoreError> {
        if scope.is_empty() || scope.len() > 128 {
            return Ok(None);
        }
        Ok(self
            .store
            .get(&scope_key(scope))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// All identifiers.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.store.set_members(&index_key()).await
    }

    /// Deletes a resource server and frees its scope names. Returns `false`
    /// if it did not exist.
    pub async fn delete(&self, identifier: &str) -> Result<bool, StoreError> {
        let Some(rs) = self.get(identifier).await? else {
            return Ok(false);
        };
        self.release_scopes(&rs, &[]).await;
        let existed = self.store.delete(&resource_key(identifier)).await?;
        self.store.set_remove(&index_key(), identifier).await?;
        Ok(existed)
    }
}

/// A problem with one field of an app: (field path, message).
pub type FieldProblem = (String, String);

impl ResourceRegistry {
    /// Checks the API-related fields of an app against the registered
    /// resource servers: `grant_types` (known, not empty, `client_credentials`
    /// only for confidential apps), `allowed_scopes` (OIDC scopes, or scopes
    /// some resource server defines) and `default_resource` (registered).
    pub async fn check_app_fields(
        &self,
        public: bool,
        grant_types: &[super::clients::GrantType],
        allowed_scopes: &[String],
        default_resource: Option<&str>,
    ) -> Result<Result<(), FieldProblem>, StoreError> {
        use super::clients::GrantType;
        let bad = |f: String, m: String| Ok(Err((f, m)));
        if grant_types.is_empty() {
            return bad("grant_types".into(), "needs at least one grant type".into());
        }
        for (i, g) in grant_types.iter().enumerate() {
            if *g == GrantType::ClientCredentials && public {
                return bad(
                    format!("grant_types[{i}]"),
                    "client_credentials needs a confidential client (public is true)".into(),
                );
            }
            if grant_types.iter().take(i).any(|x| x == g) {
                return bad(format!("grant_types[{i}]"), format!("{} appears twice", g.as_str()));
            }
        }
        for (i, s) in allowed_scopes.iter().enumerate() {
            if is_oidc_scope(s) {
                continue;
            }
            if let Err(m) = check_scope_name(s) {
                return bad(format!("allowed_scopes[{i}]"), m);
            }
            if self.owner_of(s).await?.is_none() {
                return bad(
                    format!("allowed_scopes[{i}]"),
                    format!("{s:?} is not defined by any resource server"),
                );
            }
        }
        if let Some(r) = default_resource {
            if self.get(r).await?.is_none() {
                return bad(
                    "default_resource".into(),
                    format!("{r:?} is not a registered resource server"),
                );
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(id: &str, scopes: &[&str]) -> ResourceServer {
        ResourceServer {
            identifier: id.into(),
            name: id.into(),
            scopes: scopes
                .iter()
                .map(|s| ResourceScope {
                    name: (*s).into(),
                    description: String::new(),
                })
                .collect(),
            created_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    #[tokio::test]
    async fn a_scope_name_belongs_to_one_resource_server() {
        let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
        let reg = ResourceRegistry::new(std::sync::Arc::new(crate::store::memory::MemoryStore::new(clock)));
        reg.create(&rs("https://a.test", &["a:read", "shared"])).await.unwrap();
        let taken = reg
            .create(&rs("https://b.test", &["b:read", "shared"]))
            .await
            .unwrap_err();
        assert!(matches!(taken, ResourceError::ScopeTaken { index: 1, ref owner, .. } if owner == "https://a.test"));
        assert!(
            reg.get("https://b.test").await.unwrap().is_none(),
            "nothing left behind"
        );
        assert_eq!(
            reg.owner_of("b:read").await.unwrap(),
            None,
            "its other names were released"
        );
        assert!(
            reg.put(&rs("https://b.test", &["shared"])).await.is_err(),
            "the config file too"
        );
        assert_eq!(reg.owner_of("shared").await.unwrap().as_deref(), Some("https://a.test"));

        // Redeclaring A without `shared` frees it.
        reg.put(&rs("https://a.test", &["a:read", "a:write"])).await.unwrap();
        assert_eq!(reg.owner_of("shared").await.unwrap(), None);
        reg.create(&rs("https://b.test", &["shared"])).await.unwrap();
        assert!(reg.delete("https://b.test").await.unwrap());
        assert_eq!(reg.owner_of("shared").await.unwrap(), None);
        assert_eq!(reg.list().await.unwrap(), vec!["https://a.test".to_owned()]);
    }

    #[test]
    fn identifiers_are_absolute_uris_without_fragment() {
        assert!(check_identifier("https://api.example.com").is_ok());
        assert!(check_identifier("urn:example:billing").is_ok());
        assert!(check_identifier("api").is_err());
        assert!(check_identifier("https://api.example.com/#x").is_err());
        assert!(check_identifier("").is_err());
    }

    #[test]
    fn scope_names_are_scope_tokens_and_not_oidc_scopes() {
        assert!(check_scope_name("billing:read").is_ok());
        assert!(check_scope_name("openid").is_err());
        assert!(check_scope_name("offline_access").is_err());
        assert!(check_scope_name("two words").is_err());
        assert!(check_scope_name("quote\"d").is_err());
        assert!(check_scope_name("").is_err());
    }
}
