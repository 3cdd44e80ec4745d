//! Test support: spawning the gateway, Redis and peers.

pub mod redis;
