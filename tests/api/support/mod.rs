//! Test support: spawning the gateway, Redis and the peers.
#![allow(dead_code)]

pub mod admin;
pub mod app;
pub mod browser;
pub mod dns;
pub mod gateway;
pub mod held_store;
pub mod hooks;
pub mod html_form;
pub mod local;
pub mod logs;
pub mod nginx;
pub mod oidc_world;
pub mod peers;
pub mod ports;
pub mod real_browser;
pub mod redis;
pub mod replay_free;
pub mod round_robin;
pub mod saml_world;
pub mod smtp;
pub mod soft_passkey;
