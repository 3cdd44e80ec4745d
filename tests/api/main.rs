//! Integration tests, compiled as one binary. Each module is one area;
//! `support` spawns the gateway, Redis and the peer implementations.

mod store_conformance;
mod support;
