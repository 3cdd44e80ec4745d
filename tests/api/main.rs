//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod support;

mod admin_api;
mod cli;
mod oidc_connector;
mod oidc_flow;
mod oidc_negative;
mod outbound_http;
mod peers_selftest;
mod saml_browser;
mod saml_flow;
mod store_conformance;
