//! Portcullis: a multi-tenant federation gateway for enterprise single sign-on.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view, the code map and the
//! invariants. Layers, each importing only those below it:
//! edge (`http`, `admin`) → flow (`broker`, `provider`) → domain (`upstream`,
//! `tenant`, `directory`, `tokens`) → ground (`store`, `secrets`, `config`, `clock`, `ids`, `secret`).
//! `app`, `cli` and `backup` wire everything together at the top.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod authorizer;
pub mod backup;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod directory;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod local;
pub mod lru;
pub mod mail;
pub mod markup;
pub mod meter;
pub mod mfa;
pub mod portal;
pub mod provider;
pub mod secret;
pub mod secrets;
pub mod single_flight;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod wake_probe;
