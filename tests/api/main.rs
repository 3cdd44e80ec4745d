//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod support;

mod oidc_connector;
mod admin_api;
mod outbound_http;
mod store_conformance;
