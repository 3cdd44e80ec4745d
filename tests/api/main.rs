//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod saml_attacks;
mod saml_begin;
mod saml_bindings;
mod saml_common;
mod saml_crafted;
mod saml_interop;
mod saml_setup;
mod saml_vendors;
mod support;
