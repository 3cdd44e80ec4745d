//! Portcullis: a multi-tenant federation gateway for enterprise single sign-on.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the code map.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod ids;
pub mod secret;
pub mod store;
pub mod tokens;
pub mod upstream;
