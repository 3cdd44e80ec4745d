//! Unit tests of the token layer, on MemoryStore and ManualClock.

mod keyset;
mod provider;
mod util;
mod verify;

use super::keys::Keyset;
use super::*;
use crate::clock::{Clock, ManualClock, SharedClock};
use crate::store::memory::MemoryStore;
use crate::store::{Key, SharedStore, StoreJson};
use base64::Engine;
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const ISS: &str = "https://sso.example.test";
const ALL: [SigningAlgorithm; 3] = [
    SigningAlgorithm::Rs256,
    SigningAlgorithm::Es256,
    SigningAlgorithm::EdDsa,
];

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

fn config(alg: SigningAlgorithm) -> KeyConfig {
    KeyConfig {
        algorithm: alg,
        rotation_interval: Some(Duration::from_secs(24 * 3600)),
        max_token_lifetime: Duration::from_secs(3600),
        cache_for: Duration::from_secs(30),
    }
}

/// A clock in 2001: far in the past, so a verifier that consulted the real
/// wall clock instead of the injected one would see every token as expired.
fn clock() -> ManualClock {
    ManualClock::at(chrono::Utc.with_ymd_and_hms(2001, 2, 3, 4, 5, 6).unwrap())
}

struct Env {
    store: SharedStore,
    clock: ManualClock,
}

impl Env {
    fn new() -> Self {
        let clock = clock();
        let shared: SharedClock = Arc::new(clock.clone());
        Self {
            store: Arc::new(MemoryStore::new(shared)),
            clock,
        }
    }

    async fn manager(&self, alg: SigningAlgorithm) -> KeyManager {
        KeyManager::init(self.store.clone(), Arc::new(self.clock.clone()), config(alg))
            .await
            .unwrap()
    }

    fn claims(&self, lifetime: i64) -> Claims {
        let now = self.clock.unix();
        Claims {
            iss: ISS.into(),
            sub: "user-1".into(),
            aud: "client-1".into(),
            iat: now,
            exp: now + lifetime,
            nbf: None,
        }
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
    }

    async fn stored(&self) -> Keyset {
        self.store
            .get_json(&Key::global("keys", "signing"))
            .await
            .unwrap()
            .unwrap()
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn jwks_kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn reason(r: Result<Claims, TokenError>) -> &'static str {
    r.unwrap_err()
        .reason()
        .expect("a rejection, not an internal error")
        .code()
}

fn b64j(v: &Value) -> String {
    b64(&serde_json::to_vec(v).unwrap())
}

/// A compact JWS with arbitrary header, payload and signature bytes.
fn forge(header: &Value, payload: &Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", b64j(header), b64j(payload), b64(sig))
}
