//! The OpenID Connect provider for the SaaS's apps: authorization codes,
//! the token endpoint's grants, refresh-token families, userinfo,
//! revocation and introspection. HTTP-free: `http::oauth` maps these to
//! RFC 6749 responses.

pub mod clients;
pub mod codes;
pub mod error;
pub mod exchange;
pub mod forward;
pub mod grants;
mod pre_token;
pub mod refresh;
pub mod resources;
pub mod scopes;
pub mod upstream;

pub use error::{OAuthError, OAuthErrorCode};

use crate::clock::SharedClock;
use crate::config::TokenSettings;
use crate::directory::Directory;
use crate::store::SharedStore;
use crate::tokens::KeyManager;
use std::sync::Arc;
use url::Url;

/// Everything the provider needs, shared by the HTTP handlers and the broker.
#[derive(Clone)]
pub struct Provider {
    /// The issuer (public base URL).
    pub issuer: Url,
    /// The store.
    pub store: SharedStore,
    /// The clock.
    pub clock: SharedClock,
    /// Token lifetimes.
    pub ttl: TokenSettings,
    /// Signing keys.
    pub keys: Arc<KeyManager>,
    /// Registered apps.
    pub clients: clients::ClientRegistry,
    /// Registered resource servers (APIs).
    pub resources: resources::ResourceRegistry,
    /// Users.
    pub directory: Directory,
    /// Checks upstream sessions at the app's refresh (`None`: never).
    pub upstream: Option<Arc<dyn upstream::UpstreamSessions>>,
    /// The audit log (security events: sign-ins, token reuse, throttling).
    pub audit: crate::audit::Audit,
    /// Tenants' hooks (the pre-token-generation hook at minting); `None`: none are called.
    pub hooks: Option<crate::hooks::Hooks>,
}

impl Provider {
    /// The issuer as a string without a trailing slash (the `iss` claim).
    pub fn iss(&self) -> String {
        self.issuer.as_str().trim_end_matches('/').to_owned()
    }
}
