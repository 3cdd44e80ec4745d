//! Test support: spawning the gateway, Redis and the peers.
#![allow(dead_code)]

pub mod app;
pub mod redis;
