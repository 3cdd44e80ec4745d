//! The OIDC upstream connector against a scriptable fake IdP: one test per
//! rejection reason, plus the happy path, key rotation and setup.

mod fake_idp;
mod flow;
mod id_token;
mod setup;

use base64::Engine;
use chrono::{Duration, TimeZone, Utc};
use fake_idp::{FakeIdp, IdpKey, ACCESS_TOKEN, CLIENT_ID, CLIENT_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::clock::{Clock, ManualClock};
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::secret::Secret;
use portcullis::store::memory::MemoryStore;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use portcullis::upstream::oidc::{self, OidcConnector};
use portcullis::upstream::{
    BeginRequest, CallbackParams, Connection, ConnectionKind, Connector, Identity, UpstreamContext, UpstreamError,
    UpstreamRedirect,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use url::Url;

pub(crate) const SKEW: i64 = 60;

pub(crate) fn context(clock: &ManualClock, allow_private_networks: bool) -> UpstreamContext {
    UpstreamContext {
        http: OutboundHttp::new(OutboundConfig {
            allow_private_networks,
            timeout: std::time::Duration::from_secs(5),
            max_body_bytes: 1024 * 1024,
        })
        .unwrap(),
        clock: Arc::new(clock.clone()),
        store: Arc::new(MemoryStore::new(Arc::new(clock.clone()))),
        public_url: Url::parse("https://gw.example.com/").unwrap(),
        clock_skew_secs: SKEW,
        saml_in_place_bytes: 0,
    }
}

pub(crate) struct Fixture {
    pub(crate) idp: FakeIdp,
    pub(crate) key: IdpKey,
    pub(crate) clock: ManualClock,
    pub(crate) ctx: UpstreamContext,
    pub(crate) connection: Connection,
    pub(crate) connector: OidcConnector,
}

/// One login in flight.
pub(crate) struct Login {
    pub(crate) login_id: String,
    pub(crate) pending: Value,
    pub(crate) nonce: String,
    pub(crate) url: Url,
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        Self::with_key(IdpKey::generate("k1")).await
    }

    pub(crate) async fn with_key(key: IdpKey) -> Self {
        let idp = FakeIdp::start(key.clone()).await;
        let clock = ManualClock::at(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
        let ctx = context(&clock, true);
        let cfg = oidc::setup(
            json!({
                "issuer": idp.issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scopes": ["email", "profile"],
                "claim_mapping": {"groups": "groups"},
            }),
            &ctx,
        )
        .await
        .unwrap();
        let connection = Connection {
            id: ConnectionId::parse("corp-idp").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            revision: 1,
            status: portcullis::upstream::ConnectionStatus::Active,
            disabled_by_platform: false,
            kind: ConnectionKind::Oidc(cfg.clone()),
        };
        let connector = OidcConnector::new(&connection, cfg, ctx.clone()).unwrap();
        Self {
            idp,
            key,
            clock,
            ctx,
            connection,
            connector,
        }
    }

    pub(crate) async fn begin(&self) -> Login {
        let login_id = format!("login-{}", rand_suffix());
        let begun = self
            .connector
            .begin(BeginRequest {
                login_id: &login_id,
                force_authn: false,
                login_hint: None,
                max_age: None,
                require_mfa: false,
            })
            .await
            .unwrap();
        let UpstreamRedirect::Redirect(url) = begun.redirect else {
            panic!("expected a redirect")
        };
        let nonce = query(&url, "nonce").unwrap();
        self.idp.issue_code("code-123", &url);
        Login {
            login_id,
            pending: begun.state,
            nonce,
            url,
        }
    }

    /// Standard valid claims for `login`.
    pub(crate) fn claims(&self, login: &Login) -> Value {
        let now = self.clock.unix();
        json!({
            "iss": self.idp.issuer,
            "aud": CLIENT_ID,
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
            "nonce": login.nonce,
            "email": "ada@acme.example",
            "email_verified": true,
            "name": "Ada Lovelace",
            "given_name": "Ada",
            "family_name": "Lovelace",
            "amr": ["pwd", "otp"],
        })
    }

    pub(crate) fn callback(&self, login: &Login) -> CallbackParams {
        let mut query = BTreeMap::new();
        query.insert("state".to_owned(), login.login_id.clone());
        query.insert("code".to_owned(), "code-123".to_owned());
        CallbackParams {
            query,
            form: BTreeMap::new(),
        }
    }

    /// Has the IdP return `id_token` and completes `login` with `params`.
    pub(crate) async fn finish(
        &self,
        login: &Login,
        id_token: String,
        params: CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        self.idp.with(|s| s.id_token = Some(id_token));
        self.connector.complete(Some(&login.pending), &params).await
    }

    /// Completes `login` with an ID token made of `claims`, signed normally.
    pub(crate) async fn finish_claims(&self, login: &Login, claims: Value) -> Result<Identity, UpstreamError> {
        let token = self.key.sign(&claims);
        self.finish(login, token, self.callback(login)).await
    }
}

pub(crate) fn rand_suffix() -> String {
    use rand::RngCore;
    format!("{:x}", rand::rng().next_u64())
}

pub(crate) fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

pub(crate) fn code(result: Result<Identity, UpstreamError>) -> &'static str {
    match result {
        Ok(id) => panic!("expected a rejection, got {id:?}"),
        Err(e) => {
            assert!(!e.message.is_empty());
            e.code
        }
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `at_hash` of `access_token` with the hash `D` (OIDC Core §3.1.3.6):
/// base64url of the left half of its digest.
pub(crate) fn at_hash<D: Digest>(access_token: &str) -> String {
    let digest = D::digest(access_token.as_bytes());
    b64(&digest[..digest.len() / 2])
}
