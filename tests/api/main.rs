//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod support;

mod admin_api;
mod browser_security;
mod cli;
mod dev_flow;
mod domains;
mod memory_flat;
mod oidc_connector;
mod oidc_flow;
mod oidc_negative;
mod oidc_trust;
mod outbound_http;
mod peers_selftest;
mod revocation;
mod revocation_races;
mod saml_attacks;
mod saml_begin;
mod saml_bindings;
mod saml_browser;
mod saml_common;
mod saml_crafted;
mod saml_flow;
mod saml_gateway;
mod saml_interop;
mod saml_setup;
mod saml_trust;
mod saml_vendors;
mod scopes;
mod store_conformance;
