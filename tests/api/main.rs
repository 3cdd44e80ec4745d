//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod oidc_flow;
mod oidc_negative;
mod peers_selftest;
mod saml_browser;
mod saml_flow;
mod support;

mod admin_api;
mod cli;
mod oidc_connector;
mod outbound_http;
mod store_conformance;
