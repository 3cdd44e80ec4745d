//! Resource servers (APIs): an identifier (the access token's `aud`) and the
//! scopes it defines. One registry for the whole platform, like apps.
//!
//! A scope name is unique only within its resource server: two APIs may both
//! define `read`. A scope is written either *bare* (`read`) or *qualified*,
//! Cognito-style, as `<identifier>/<name>` (`https://api.example.com/read`).
//! Scope names cannot contain `/` (as in Cognito) and identifiers are
//! RFC 6749 scope-token characters, so a qualified scope splits at its last
//! `/` without ambiguity. The same two forms work in an app's
//! `allowed_scopes` and in a requested `scope`:
//! - a bare allowed scope allows that name at every resource server the app
//!   targets that defines it (including one registered later); a qualified
//!   one only at that server;
//! - a requested bare scope is looked up in the target resource server; a
//!   requested qualified scope only counts when its identifier is the
//!   target (one token, one `aud`).
//!
//! The OIDC scopes (`openid`, `email`, `profile`, `groups`,
//! `offline_access`) are not API scopes and cannot be defined by a resource
//! server.

use super::clients::Client;
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The scopes of OpenID Connect itself, which every app may ask for.
pub const OIDC_SCOPES: [&str; 5] = ["openid", "email", "profile", "groups", "offline_access"];

/// True for one of [`OIDC_SCOPES`].
pub fn is_oidc_scope(s: &str) -> bool {
    OIDC_SCOPES.contains(&s)
}

/// How a scope string refers to a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRef<'a> {
    /// One of [`OIDC_SCOPES`].
    Oidc(&'a str),
    /// A bare API scope name (`read`).
    Bare(&'a str),
    /// `<identifier>/<name>`: the scope `name` of the resource server `resource`.
    Qualified {
        /// The resource server's identifier.
        resource: &'a str,
        /// The scope name within it.
        name: &'a str,
    },
}

impl<'a> ScopeRef<'a> {
    /// Reads a scope string. Anything with a `/` is qualified (scope names
    /// cannot contain one), split at the last `/`.
    pub fn parse(s: &'a str) -> Self {
        if is_oidc_scope(s) {
            return Self::Oidc(s);
        }
        match s.rsplit_once('/') {
            Some((resource, name)) => Self::Qualified { resource, name },
            None => Self::Bare(s),
        }
    }
}

/// The qualified form of the scope `name` of `identifier`.
pub fn qualified(identifier: &str, name: &str) -> String {
    format!("{identifier}/{name}")
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
    /// Per-route scope rules for forward auth (`GET /forward-auth`); empty:
    /// only the scope the proxy asks for is checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteRule>,
}

/// A route rule of a resource server, checked by forward auth against the
/// original request the proxy reports (`X-Original-URI`/`X-Forwarded-Uri`,
/// `X-Original-Method`/`X-Forwarded-Method`). A request is allowed when a
/// rule matches its method and path and the token holds all of its scopes;
/// a resource server with rules refuses every request no rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A path pattern of `/`-separated segments: a literal segment, `*` (any
    /// one segment), `**` (last only: any rest, even empty), or a segment
    /// holding `${sub}` / `${tenant}`, expanded for the token's user.
    pub path: String,
    /// Methods (upper case); empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Scopes of this resource server the token needs (bare or qualified,
    /// or a token-exchange scope with `${sub}`/`${tenant}`).
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Checks a resource server's route rules (at most 64): field path and message.
pub fn check_routes(routes: &[RouteRule]) -> Result<(), (String, String)> {
    if routes.len() > 64 {
        return Err(("routes".into(), "at most 64 route rules".into()));
    }
    for (i, r) in routes.iter().enumerate() {
        let f = |x: &str| format!("routes[{i}].{x}");
        if !r.path.starts_with('/') || r.path.len() > 1024 || r.path.contains(['?', '#', '%', '\\']) {
            return Err((
                f("path"),
                "must start with '/' and hold no '?', '#', '%' or '\\' (at most 1024 characters)".into(),
            ));
        }
        let segments: Vec<&str> = r.path.split('/').skip(1).collect();
        for (j, seg) in segments.iter().enumerate() {
            if matches!(*seg, "." | "..") {
                return Err((f("path"), "has a '.' or '..' segment".into()));
            }
            if *seg == "**" && j + 1 != segments.len() {
                return Err((f("path"), "'**' can only be the last segment".into()));
            }
            if seg.replace("${sub}", "").replace("${tenant}", "").contains("${") {
                return Err((
                    f("path"),
                    "uses an unknown policy variable (only ${sub} and ${tenant} exist)".into(),
                ));
            }
        }
        for (j, m) in r.methods.iter().enumerate() {
            if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err((
                    format!("routes[{i}].methods[{j}]"),
                    "must be an upper-case method name".into(),
                ));
            }
        }
        for (j, s) in r.scopes.iter().enumerate() {
            if s.is_empty() || s.len() > 255 || !scope_token_chars(s) {
                return Err((
                    format!("routes[{i}].scopes[{j}]"),
                    format!("{s:?} is not a scope token"),
                ));
            }
        }
    }
    Ok(())
}

impl ResourceServer {
    /// True if this resource server defines the scope named `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.name == name)
    }

    /// The name of the scope of this resource server that the scope string
    /// `scope` refers to: a bare name it defines, or a qualified scope with
    /// its identifier and a name it defines. `None` for anything else
    /// (OIDC scopes, other servers' qualified scopes, undefined names).
    pub fn resolve<'a>(&self, scope: &'a str) -> Option<&'a str> {
        match ScopeRef::parse(scope) {
            ScopeRef::Oidc(_) => None,
            ScopeRef::Bare(name) => self.defines(name).then_some(name),
            ScopeRef::Qualified { resource, name } => {
                (resource == self.identifier && self.defines(name)).then_some(name)
            }
        }
    }

    /// True if an app allowed `allowed_scopes` may be granted this server's
    /// scope `name` (allowed bare, or qualified with this identifier).
    pub fn allows(&self, allowed_scopes: &[String], name: &str) -> bool {
        allowed_scopes.iter().any(|a| self.resolve(a) == Some(name))
    }

    /// True if an app may obtain tokens for this server: it is the app's
    /// default resource, or it defines one of the app's allowed scopes.
    pub fn targetable_by(&self, client: &Client) -> bool {
        client.default_resource.as_deref() == Some(self.identifier.as_str())
            || client.allowed_scopes.iter().any(|a| self.resolve(a).is_some())
    }

    /// True if deleting this server would leave `client` referring to
    /// something that no longer exists: it is the app's default resource, an
    /// allowed scope is qualified with its identifier, or an allowed bare
    /// scope is defined by this server and by none of `others`.
    pub fn needed_by(&self, client: &Client, others: &[ResourceServer]) -> bool {
        client.default_resource.as_deref() == Some(self.identifier.as_str())
            || client.allowed_scopes.iter().any(|a| match ScopeRef::parse(a) {
                ScopeRef::Oidc(_) => false,
                ScopeRef::Qualified { resource, .. } => resource == self.identifier,
                ScopeRef::Bare(name) => {
                    self.defines(name)
                        && !others
                            .iter()
                            .any(|o| o.identifier != self.identifier && o.defines(name))
                }
            })
    }
}

/// True if every byte is an RFC 6749 §3.3 scope-token character
/// (printable ASCII except space, `"` and `\`).
fn scope_token_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Checks a resource server identifier: an absolute URI without fragment
/// (RFC 8707 §2), at most 255 characters, made of scope-token characters
/// because it is the first part of its qualified scopes (as in Cognito).
pub fn check_identifier(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if !scope_token_chars(id) {
        return Err(format!(
            "{id:?} must be printable ASCII without spaces, '\"' or '\\' (it prefixes its qualified scopes)"
        ));
    }
    let url = url::Url::parse(id).map_err(|e| format!("{id:?} is not an absolute URI ({e})"))?;
    if url.fragment().is_some() || id.contains('#') {
        return Err(format!("{id:?} must not contain a fragment"));
    }
    Ok(())
}

/// Checks a scope name a resource server defines: an RFC 6749 §3.3
/// scope-token of at most 128 characters without `/` (which separates a
/// qualified scope's identifier from its name), and not an OIDC scope.
pub fn check_scope_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || !scope_token_chars(name) || name.contains('/') {
        return Err(format!(
            "{name:?} must be 1 to 128 printable ASCII characters without spaces, '/', '\"' or '\\'"
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store-backed resource server registry.
#[derive(Clone)]
pub struct ResourceRegistry {
    store: SharedStore,
    /// One up after every change made through this registry (shared by its
    /// clones), so what is derived from the set (the discovery document's
    /// scopes) is rebuilt at once on this replica.
    changes: Arc<AtomicU64>,
}

pub(crate) fn resource_key(identifier: &str) -> Key {
    // Hashed: identifiers are URIs, which may hold characters a key should not.
    Key::global(
        "resources",
        format!("resource:{}", crate::tokens::sha256_base64url(identifier.as_bytes())),
    )
}
pub(crate) fn index_key() -> Key {
    Key::global("resources", "index")
}

impl ResourceRegistry {
    /// A registry over `store`.
    pub fn new(store: SharedStore) -> Self {
        Self {
            store,
            changes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many changes were made through this registry (or a clone) so
    /// far: a cache of something derived from the set compares it.
    pub fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Registers a resource server; fails if the identifier is taken. Its
    /// scope names may be the same as another server's.
    pub async fn create(&self, rs: &ResourceServer) -> Result<(), ResourceError> {
        if !self
            .store
            .put_json_if_absent(&resource_key(&rs.identifier), rs, None)
            .await?
        {
            return Err(ResourceError::Exists(rs.identifier.clone()));
        }
        self.changed();
        self.store.set_add(&index_key(), &rs.identifier, None).await?;
        self.changed();
        Ok(())
    }

    /// Registers or replaces a resource server (declared in the config file).
    pub async fn put(&self, rs: &ResourceServer) -> Result<(), ResourceError> {
        self.changed();
        self.store.put_json(&resource_key(&rs.identifier), rs, None).await?;
        self.store.set_add(&index_key(), &rs.identifier, None).await?;
        self.changed();
        Ok(())
    }

    /// Reads a resource server.
    pub async fn get(&self, identifier: &str) -> Result<Option<ResourceServer>, StoreError> {
        if identifier.is_empty() || identifier.len() > 255 {
            return Ok(None);
        }
        self.store.get_json(&resource_key(identifier)).await
    }

    /// All identifiers.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.store.set_members(&index_key()).await
    }

    /// Every resource server, ordered by identifier.
    pub async fn all(&self) -> Result<Vec<ResourceServer>, StoreError> {
        let mut ids = self.list().await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rs) = self.get(&id).await? {
                out.push(rs);
            }
        }
        Ok(out)
    }

    /// Deletes a resource server. Returns `false` if it did not exist.
    pub async fn delete(&self, identifier: &str) -> Result<bool, StoreError> {
        if self.get(identifier).await?.is_none() {
            return Ok(false);
        }
        self.changed();
        let existed = self.store.delete(&resource_key(identifier)).await?;
        self.store.set_remove(&index_key(), identifier).await?;
        self.changed();
        Ok(existed)
    }
}

/// A problem with one field of an app: (field path, message).
pub type FieldProblem = (String, String);

impl ResourceRegistry {
    /// Checks the API-related fields of an app against the registered
    /// resource servers: `grant_types` (known, not empty, `client_credentials`
    /// and token exchange only for confidential apps), `allowed_scopes` (OIDC scopes, bare names
    /// some resource server defines, or qualified scopes
    /// `<identifier>/<name>` that server defines) and `default_resource`
    /// (registered).
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
            if *g == GrantType::TokenExchange && public {
                return bad(
                    format!("grant_types[{i}]"),
                    "token exchange needs a confidential client (public is true)".into(),
                );
            }
            if grant_types.iter().take(i).any(|x| x == g) {
                return bad(format!("grant_types[{i}]"), format!("{} appears twice", g.as_str()));
            }
        }
        // Read once, and only when a bare name has to be looked for everywhere.
        let mut every: Option<Vec<ResourceServer>> = None;
        for (i, s) in allowed_scopes.iter().enumerate() {
            let field = format!("allowed_scopes[{i}]");
            match ScopeRef::parse(s) {
                ScopeRef::Oidc(_) => {}
                ScopeRef::Bare(name) => {
                    if let Err(m) = check_scope_name(name) {
                        return bad(field, m);
                    }
                    let servers = match &every {
                        Some(v) => v,
                        None => every.insert(self.all().await?),
                    };
                    if !servers.iter().any(|r| r.defines(name)) {
                        return bad(field, format!("{s:?} is not defined by any resource server"));
                    }
                }
                ScopeRef::Qualified { resource, name } => {
                    if let Err(m) = check_scope_name(name) {
                        return bad(field, format!("{s:?}: the scope name {m}"));
                    }
                    let Some(rs) = self.get(resource).await? else {
                        return bad(
                            field,
                            format!("{s:?}: {resource:?} is not a registered resource server"),
                        );
                    };
                    if !rs.defines(name) {
                        return bad(
                            field,
                            format!("{s:?}: {name:?} is not defined by the resource server {resource:?}"),
                        );
                    }
                }
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
            routes: vec![],
        }
    }

    fn registry() -> ResourceRegistry {
        let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
        ResourceRegistry::new(std::sync::Arc::new(crate::store::memory::MemoryStore::new(clock)))
    }

    fn app(allowed: &[&str], default_resource: Option<&str>) -> Client {
        Client {
            require_mfa: false,
            client_id: "app".into(),
            name: "app".into(),
            secret_sha256: None,
            previous_secret: None,
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            allowed_tenants: vec![],
            allowed_scopes: allowed.iter().map(|s| (*s).to_owned()).collect(),
            grant_types: vec![],
            default_resource: default_resource.map(str::to_owned),
            created_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    #[tokio::test]
    async fn two_resource_servers_may_define_the_same_scope_name() {
        let reg = registry();
        reg.create(&rs("https://a.test", &["read", "write"])).await.unwrap();
        reg.create(&rs("https://b.test", &["read"])).await.unwrap();
        reg.put(&rs("https://c.test", &["read", "write"])).await.unwrap();
        assert!(matches!(
            reg.create(&rs("https://a.test", &["other"])).await,
            Err(ResourceError::Exists(_))
        ));
        let all: Vec<String> = reg.all().await.unwrap().into_iter().map(|r| r.identifier).collect();
        assert_eq!(all, ["https://a.test", "https://b.test", "https://c.test"]);
        assert!(reg.delete("https://b.test").await.unwrap());
        assert!(!reg.delete("https://b.test").await.unwrap());
        assert!(reg.get("https://a.test").await.unwrap().unwrap().defines("read"));
        assert!(reg.get("https://c.test").await.unwrap().unwrap().defines("read"));
    }

    #[test]
    fn scope_strings_are_oidc_bare_or_qualified_at_the_last_slash() {
        assert_eq!(ScopeRef::parse("openid"), ScopeRef::Oidc("openid"));
        assert_eq!(ScopeRef::parse("billing:read"), ScopeRef::Bare("billing:read"));
        assert_eq!(
            ScopeRef::parse("https://api.test/v1/read"),
            ScopeRef::Qualified {
                resource: "https://api.test/v1",
                name: "read"
            }
        );
        assert_eq!(
            ScopeRef::parse("https://api.test//read"),
            ScopeRef::Qualified {
                resource: "https://api.test/",
                name: "read"
            }
        );
        assert_eq!(qualified("https://api.test/", "read"), "https://api.test//read");
    }

    #[test]
    fn a_scope_string_resolves_only_at_the_server_it_names() {
        let a = rs("https://a.test", &["read", "write"]);
        let b = rs("https://b.test/api", &["read"]);
        assert_eq!(a.resolve("read"), Some("read"));
        assert_eq!(b.resolve("read"), Some("read"));
        assert_eq!(a.resolve("https://a.test/read"), Some("read"));
        assert_eq!(b.resolve("https://a.test/read"), None, "another server's read");
        assert_eq!(b.resolve("https://b.test/api/read"), Some("read"));
        assert_eq!(a.resolve("https://b.test/api/read"), None);
        assert_eq!(b.resolve("write"), None, "not defined there");
        assert_eq!(b.resolve("https://b.test/api/write"), None);
        assert_eq!(a.resolve("openid"), None);

        let qualified_a = app(&["https://a.test/read"], None);
        assert!(a.allows(&qualified_a.allowed_scopes, "read"));
        assert!(!b.allows(&qualified_a.allowed_scopes, "read"));
        assert!(a.targetable_by(&qualified_a) && !b.targetable_by(&qualified_a));
        let bare = app(&["read"], None);
        assert!(a.allows(&bare.allowed_scopes, "read") && b.allows(&bare.allowed_scopes, "read"));
        assert!(!a.allows(&bare.allowed_scopes, "write"));
        assert!(a.targetable_by(&bare) && b.targetable_by(&bare));
        let by_default = app(&[], Some("https://b.test/api"));
        assert!(b.targetable_by(&by_default) && !a.targetable_by(&by_default));
    }

    #[test]
    fn a_server_is_needed_by_an_app_that_would_be_left_pointing_at_nothing() {
        let a = rs("https://a.test", &["read", "write"]);
        let b = rs("https://b.test", &["read"]);
        let both = [a.clone(), b.clone()];
        // Bare `read` is still defined by the other server; `write` only by A.
        assert!(!b.needed_by(&app(&["read", "openid"], None), &both));
        assert!(!a.needed_by(&app(&["read"], None), &both));
        assert!(a.needed_by(&app(&["write"], None), &both));
        assert!(b.needed_by(&app(&["read"], None), std::slice::from_ref(&b)));
        // Qualified or default: always.
        assert!(b.needed_by(&app(&["https://b.test/read"], None), &both));
        assert!(!a.needed_by(&app(&["https://b.test/read"], None), &both));
        assert!(b.needed_by(&app(&[], Some("https://b.test")), &both));
    }

    #[tokio::test]
    async fn allowed_scopes_are_checked_in_both_forms() {
        let reg = registry();
        reg.create(&rs("https://a.test", &["read", "write"])).await.unwrap();
        reg.create(&rs("https://b.test", &["read"])).await.unwrap();
        let check = |allowed: &[&str]| {
            let reg = reg.clone();
            let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
            async move {
                reg.check_app_fields(
                    false,
                    &[super::super::clients::GrantType::AuthorizationCode],
                    &allowed,
                    None,
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(
            check(&["openid", "read", "write", "https://a.test/write", "https://b.test/read"]).await,
            Ok(())
        );
        for (allowed, field, why) in [
            (
                &["read", "nope"][..],
                "allowed_scopes[1]",
                "not defined by any resource server",
            ),
            (
                &["https://b.test/write"][..],
                "allowed_scopes[0]",
                "is not defined by the resource server",
            ),
            (
                &["https://c.test/read"][..],
                "allowed_scopes[0]",
                "is not a registered resource server",
            ),
            (&["https://a.test/"][..], "allowed_scopes[0]", "the scope name"),
            (
                &["read", "https://a.test/openid"][..],
                "allowed_scopes[1]",
                "OpenID Connect scope",
            ),
            (&["two words"][..], "allowed_scopes[0]", "without spaces"),
        ] {
            let (f, m) = check(allowed).await.unwrap_err();
            assert_eq!(f, field, "{allowed:?}: {m}");
            assert!(m.contains(why), "{allowed:?}: {m}");
        }
    }

    #[test]
    fn identifiers_are_absolute_uris_without_fragment() {
        assert!(check_identifier("https://api.example.com").is_ok());
        assert!(check_identifier("urn:example:billing").is_ok());
        assert!(check_identifier("api").is_err());
        assert!(check_identifier("https://api.example.com/#x").is_err());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("https://api.example.com/a b").is_err());
        assert!(check_identifier("https://api.example.com/\"q\"").is_err());
        assert!(check_identifier("https://api.example.com/\\").is_err());
        assert!(check_identifier("https://api.exämple.com").is_err());
    }

    #[test]
    fn scope_names_are_scope_tokens_and_not_oidc_scopes() {
        assert!(check_scope_name("billing:read").is_ok());
        assert!(check_scope_name("openid").is_err());
        assert!(check_scope_name("offline_access").is_err());
        assert!(check_scope_name("two words").is_err());
        assert!(check_scope_name("quote\"d").is_err());
        assert!(check_scope_name("").is_err());
        assert!(check_scope_name("billing/read").is_err(), "'/' qualifies a scope");
    }
}
