//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod support;
mod saml_common;
mod saml_vendors;
mod saml_interop;
mod saml_attacks;
mod saml_setup;
