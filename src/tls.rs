//! The one TLS crypto provider of the process: rustls over OpenSSL.
//!
//! Redis over TLS (`rediss://`) and the optional HTTPS listener both use
//! rustls; its signatures, key exchange and ciphers come from OpenSSL
//! (`rustls-openssl`), the library xmlsec and our token signing already link,
//! so the binary carries one crypto stack.

use std::sync::Arc;

/// The crypto provider every rustls configuration in Portcullis is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls_openssl::default_provider())
}

/// Installs [`provider`] as the process default, for libraries that build
/// their own rustls configuration (the `redis` crate). Idempotent: a second
/// call (or a provider installed earlier) leaves the installed one in place.
pub fn install_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: both install OpenSSL.
        let _already_installed = rustls_openssl::default_provider().install_default();
    }
}
