//! Spawning a gateway whose public URL is not its listener address: a second
//! replica behind the same public name as the first (so both derive the same
//! SAML SP entity id and ACS URL), or a gateway that believes it is served
//! over https while the test talks plain http to its listener.

use url::Url;

use super::app::{AppOptions, TestApp};

/// A gateway reached at `listen`, announcing `app.base` as its public URL.
pub struct Replica {
    /// The gateway; `app.base` is its public URL (the issuer).
    pub app: TestApp,
    /// Where it actually listens (plain http on loopback).
    pub listen: Url,
}

impl Replica {
    /// The absolute URL of `path` on the listener (where requests go).
    pub fn at(&self, path: &str) -> Url {
        self.listen.join(path).unwrap()
    }
}

/// Starts the gateway like [`super::app::spawn_app`], but with the public URL
/// `public_url(port)` computed from the port it listens on.
pub async fn spawn_with_public_url(options: AppOptions, public_url: impl FnOnce(u16) -> String) -> Replica {
    let (app, listen) = super::app::spawn_listening(options, public_url).await;
    Replica { app, listen }
}
