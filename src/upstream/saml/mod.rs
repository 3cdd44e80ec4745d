//! The SAML 2.0 upstream connector (SP side, Web Browser SSO profile).
//!
//! * [`setup`] checks an admin's connection request, reads the IdP metadata
//!   and generates the connection's SP key pair.
//! * [`SamlConnector::begin`] sends an AuthnRequest (HTTP-Redirect, or
//!   HTTP-POST where the IdP has no redirect endpoint).
//! * [`SamlConnector::complete`] is the ACS: see `validate.rs` for every check.
//!
//! Policy decisions worth knowing:
//! * Only the connection's metadata certificates verify signatures (never
//!   KeyInfo), and only content xmlsec verified is read: the canonical bytes
//!   its digest covered (`ReduceMode::PreDigest`), parsed again.
//! * When the Assertion is signed, its signature is the one verified and the
//!   Response's is ignored (Response fields can then only reject). Otherwise
//!   the Response must be signed and name its `Destination`; an unsigned
//!   Response may omit `Destination`, a wrong one is always refused.
//! * A solicited response must carry `InResponseTo` on the bearer
//!   SubjectConfirmationData; an unsolicited one must carry none.
//! * Encrypted assertions: RSA-OAEP key transport only; when no verified
//!   signature covers the ciphertext, post-decryption failures share one code.
//! * Every assertion is single-use: its id stays in the replay cache until
//!   the last instant it could still be accepted, when the first of its
//!   windows closes (SubjectConfirmation and Conditions NotOnOrAfter,
//!   IssueInstant plus the maximum age, each plus the skew), so a
//!   `<OneTimeUse>` assertion is refused again for as long as it is
//!   acceptable at all, and an entry lives at most the maximum age and
//!   twice the skew, whatever NotOnOrAfter the IdP wrote.
//!   Unknown `<Condition>`s make the assertion invalid (SAML Core §2.5.1).
//! * A transient NameID is never the subject: the connection's subject
//!   attribute (or the first stable identifier found) is, or nothing is.
//! * Attributes are read by exact name in no namespace (`xml::attr`), so a
//!   look-alike `saml:Version` or `samlp:Value` is never taken for the real one.
//!
//! Validation is CPU-bound libxml2/xmlsec work, so it runs on tokio's
//! blocking pool. It is not serialized: after the one-time initialization in
//! `xml::init`, every call owns its documents, keys and xmlsec contexts,
//! which both libraries support across threads (and the `libxml` crate's
//! `!Send` documents never leave the blocking closure). The replay check runs
//! after validation, through the store's atomic `put_if_absent`.

mod assertion;
mod decrypt;
mod deflate;
mod dsig;
mod keys;
mod mapping;
mod metadata;
mod reason;
mod request;
mod setup;
mod signature;
mod validate;
mod xml;

pub use mapping::{AttributeMapping, OneOrMany};
pub use metadata::{
    any_certificate_current, carries_credentials, MAX_METADATA_BYTES, METADATA_ACCEPT, METADATA_TOO_LARGE,
    METADATA_URL_CREDENTIALS, NO_USABLE_CERTIFICATE,
};
pub use setup::{request_view, setup, setup_patched};
pub use signature::SignatureAlgorithm;

use super::{
    BeginLogin, BeginRequest, CallbackParams, Claim, Connection, Connector, Identity, UpstreamContext, UpstreamError,
};
use crate::secret::Secret;
use crate::store::Key;
use async_trait::async_trait;
use base64::Engine as _;
use reason::SamlReason;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use url::Url;

/// The largest clock skew a connection may configure, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Stored configuration of a SAML connection (JSON, next to `"kind": "saml"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamlConfig {
    /// The IdP metadata document as received (kept for reference and re-parsing).
    pub metadata_xml: String,
    /// Where the metadata was fetched from, if it came from a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<Url>,
    /// The IdP entity id (the required `Issuer`).
    pub idp_entity_id: String,
    /// The IdP SSO endpoint for the HTTP-Redirect binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_redirect_url: Option<String>,
    /// The IdP SSO endpoint for the HTTP-POST binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_post_url: Option<String>,
    /// The IdP's `WantAuthnRequestsSigned`.
    #[serde(default)]
    pub want_authn_requests_signed: bool,
    /// IdP signing certificates (base64 DER); any of them may sign, so the IdP can rotate.
    pub idp_certificates: Vec<String>,
    /// Attribute names per claim.
    #[serde(default)]
    pub attribute_mapping: AttributeMapping,
    /// Accept IdP-initiated (unsolicited) responses.
    #[serde(default)]
    pub allow_idp_initiated: bool,
    /// The app an IdP-initiated login lands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_client_id: Option<String>,
    /// The redirect URI of that app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<Url>,
    /// Sign AuthnRequests (also done whenever the IdP wants them signed).
    #[serde(default)]
    pub sign_authn_requests: bool,
    /// Refuse plaintext assertions.
    #[serde(default)]
    pub want_encrypted_assertions: bool,
    /// Accepted signature algorithms (digests follow).
    #[serde(default = "SignatureAlgorithm::defaults")]
    pub allowed_algorithms: Vec<SignatureAlgorithm>,
    /// Allowed clock skew; the context's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<i64>,
    /// Trust the IdP to have verified the email addresses it sends. SAML has
    /// no standard "verified" flag, so this setting is the assertion: when
    /// off (the default), `email_verified` is false. When on, the broker
    /// still vouches only for addresses in the tenant's own domains.
    #[serde(default)]
    pub trust_email_verified: bool,
    /// The longest an SSO session (and its refresh families) through this
    /// connection may last, seconds; the IdP's `SessionNotOnOrAfter` may end
    /// it sooner. Unset: no cap beyond the usual lifetimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_secs: Option<u64>,
    /// The `AuthnContextClassRef`s that mean MFA at this IdP, asked for
    /// (`RequestedAuthnContext`) when MFA is required and accepted as MFA
    /// in the answer. Empty: the defaults ([`crate::upstream::DEFAULT_MFA_CONTEXTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mfa_authn_contexts: Vec<String>,
    /// The SP private key (PKCS#8 PEM): signs requests, decrypts assertions.
    pub sp_private_key_pem: Secret,
    /// The SP certificate (PEM), published in SP metadata.
    pub sp_certificate_pem: String,
    /// Overrides the derived SP entity id: a connection moved from another
    /// provider keeps the entity id its IdP already knows (set by the
    /// platform admin only). Unset: [`sp_entity_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_entity_id: Option<String>,
    /// Overrides the derived ACS URL (platform admin only; on this gateway's
    /// origin, any other path is served as an alias). Unset: [`acs_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acs_url: Option<String>,
    /// The SP key pair being introduced (`rotate`): published in the SP
    /// metadata and accepted for decryption, not yet used for signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_next_key: Option<SpKeyPair>,
    /// The SP key pair replaced by `activate`: still published for
    /// encryption and accepted for decryption until it is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_previous_key: Option<SpKeyPair>,
    /// After `activate`, the previous key is retired automatically after this
    /// many seconds (unset: only by the `retire` command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_key_overlap_secs: Option<u64>,
}

/// An additional SP key pair of a connection during an overlapping rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpKeyPair {
    /// The private key (PKCS#8 PEM).
    pub private_key_pem: Secret,
    /// The certificate (PEM).
    pub certificate_pem: String,
    /// When a previous key stops being published and accepted (set by
    /// `activate` from `sp_key_overlap_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl SpKeyPair {
    /// Whether this key still counts at `now` (a previous key past its
    /// `retire_at` is gone, as if retired by command).
    fn live(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.retire_at.is_none_or(|t| now < t)
    }
}

/// Why an SP key rotation step was refused (a sentence for the admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationError(pub &'static str);

/// The overlapping rotation of a connection's SP key pair, in three steps:
///
/// 1. [`rotate_sp_key`]: a new key pair is generated and published in the SP
///    metadata next to the current one (signing and encryption
///    `KeyDescriptor`s). Requests are still signed with the current key;
///    assertions encrypted to either key decrypt. The IdP's admin (or its
///    metadata refresh) picks up the new certificate.
/// 2. [`activate_sp_key`]: requests are signed with the new key; the old one
///    stays published for encryption and keeps decrypting.
/// 3. [`retire_sp_key`]: the old key leaves the metadata and decryption
///    (or automatically `sp_key_overlap_secs` after step 2).
///
/// The SP entity id and ACS URL never change.
pub async fn rotate_sp_key(
    cfg: &mut SamlConfig,
    connection: &Connection,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), RotationError> {
    if cfg.sp_next_key.is_some() {
        return Err(RotationError(
            "a new SP certificate is already waiting: activate it first",
        ));
    }
    if cfg.sp_previous_key.as_ref().is_some_and(|k| k.live(now)) {
        return Err(RotationError(
            "the previous SP certificate is still in use: retire it first",
        ));
    }
    let sp = keys::generate_off_worker(
        format!("Portcullis SAML SP {}/{}", connection.tenant, connection.id),
        now.timestamp(),
    )
    .await
    .map_err(|_| RotationError("could not generate the SP key pair"))?;
    cfg.sp_previous_key = None;
    cfg.sp_next_key = Some(SpKeyPair {
        private_key_pem: sp.private_key_pem,
        certificate_pem: sp.certificate_pem,
        retire_at: None,
    });
    Ok(())
}

/// Step 2 of [`rotate_sp_key`]: signs with the new key from now on.
pub fn activate_sp_key(cfg: &mut SamlConfig, now: chrono::DateTime<chrono::Utc>) -> Result<(), RotationError> {
    let next = cfg.sp_next_key.take().ok_or(RotationError(
        "there is no new SP certificate to activate: rotate first",
    ))?;
    let retire_at = cfg
        .sp_key_overlap_secs
        .and_then(|s| i64::try_from(s).ok())
        .map(|s| now + chrono::Duration::seconds(s));
    let old = SpKeyPair {
        private_key_pem: std::mem::replace(&mut cfg.sp_private_key_pem, next.private_key_pem),
        certificate_pem: std::mem::replace(&mut cfg.sp_certificate_pem, next.certificate_pem),
        retire_at,
    };
    cfg.sp_previous_key = Some(old);
    Ok(())
}

/// Step 3 of [`rotate_sp_key`]: forgets the previous key.
pub fn retire_sp_key(cfg: &mut SamlConfig) -> Result<(), RotationError> {
    if cfg.sp_previous_key.take().is_none() {
        return Err(RotationError(if cfg.sp_next_key.is_some() {
            "the new SP certificate is not active yet: activate it first"
        } else {
            "there is no previous SP certificate to retire"
        }));
    }
    Ok(())
}

/// The certificates of a connection for the admin API: the IdP's signing
/// certificates and the SP's own (`sp_signing`, `sp_encryption`, with
/// `"state":"next"` or `"previous"` during a rotation). No private keys.
pub fn certificates(cfg: &SamlConfig, now: chrono::DateTime<chrono::Utc>) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for b64 in &cfg.idp_certificates {
        let der = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()).ok();
        if let Some(c) = der.and_then(|d| openssl::x509::X509::from_der(&d).ok()) {
            out.push(keys::describe(&c, "idp_signing", None));
        }
    }
    let pem = |p: &str| openssl::x509::X509::from_pem(p.as_bytes()).ok();
    if let Some(c) = pem(&cfg.sp_certificate_pem) {
        out.push(keys::describe(&c, "sp_signing", None));
        out.push(keys::describe(&c, "sp_encryption", None));
    }
    if let Some(c) = cfg.sp_next_key.as_ref().and_then(|k| pem(&k.certificate_pem)) {
        out.push(keys::describe(&c, "sp_signing", Some("next")));
        out.push(keys::describe(&c, "sp_encryption", Some("next")));
    }
    if let Some(k) = cfg.sp_previous_key.as_ref().filter(|k| k.live(now)) {
        if let Some(c) = pem(&k.certificate_pem) {
            out.push(keys::describe(&c, "sp_encryption", Some("previous")));
        }
    }
    out
}

/// `cfg` with its IdP part (metadata document, SSO endpoints,
/// `WantAuthnRequestsSigned`, signing certificates) taken from `metadata_xml`,
/// everything else (SP keys, entity id, ACS URL, mapping, policy) kept. The
/// metadata must describe the same IdP entity id as `cfg`. Used by the
/// scheduled metadata refresh; the error is a sentence for the admin.
pub fn with_idp_metadata(
    cfg: &SamlConfig,
    metadata_xml: &str,
    allow_private_networks: bool,
) -> Result<SamlConfig, String> {
    let idp = metadata::parse_idp_metadata(metadata_xml, Some(&cfg.idp_entity_id), allow_private_networks)?;
    let mut next = cfg.clone();
    next.metadata_xml = metadata_xml.to_owned();
    next.idp_entity_id = idp.entity_id;
    next.sso_redirect_url = idp.sso_redirect;
    next.sso_post_url = idp.sso_post;
    next.want_authn_requests_signed = idp.want_authn_requests_signed;
    next.idp_certificates = idp.signing_certificates;
    Ok(next)
}

/// Whether two configurations differ in what the IdP's metadata decides
/// (endpoints, `WantAuthnRequestsSigned`, signing certificates).
pub fn idp_part_differs(a: &SamlConfig, b: &SamlConfig) -> bool {
    a.idp_entity_id != b.idp_entity_id
        || a.sso_redirect_url != b.sso_redirect_url
        || a.sso_post_url != b.sso_post_url
        || a.want_authn_requests_signed != b.want_authn_requests_signed
        || a.idp_certificates != b.idp_certificates
}

/// The SP entity id of this connection (its metadata URL).
pub fn sp_entity_id(ctx: &UpstreamContext, connection: &Connection) -> Url {
    sp_metadata_url(ctx, connection)
}

/// The Assertion Consumer Service URL of this connection.
pub fn acs_url(ctx: &UpstreamContext, connection: &Connection) -> Url {
    ctx.public(&format!("saml/{}/{}/acs", connection.tenant, connection.id))
}

/// Where this connection's SP metadata is published.
pub fn sp_metadata_url(ctx: &UpstreamContext, connection: &Connection) -> Url {
    ctx.public(&format!("saml/{}/{}/metadata", connection.tenant, connection.id))
}

/// The SP entity id and ACS URL this connection actually uses: the
/// configured (migrated) values, else the derived ones.
pub fn effective_sp(ctx: &UpstreamContext, connection: &Connection, cfg: &SamlConfig) -> (String, String) {
    (
        cfg.sp_entity_id
            .clone()
            .unwrap_or_else(|| sp_entity_id(ctx, connection).to_string()),
        cfg.acs_url
            .clone()
            .unwrap_or_else(|| acs_url(ctx, connection).to_string()),
    )
}

fn config_error(detail: impl Into<String>) -> UpstreamError {
    UpstreamError::internal("saml.config_invalid", detail)
}

/// The SP metadata document of this connection.
pub fn sp_metadata_xml(
    connection: &Connection,
    cfg: &SamlConfig,
    ctx: &UpstreamContext,
) -> Result<String, UpstreamError> {
    let (entity, acs) = effective_sp(ctx, connection, cfg);
    let now = ctx.clock.now();
    let current = keys::load(&cfg.sp_private_key_pem, &cfg.sp_certificate_pem).map_err(config_error)?;
    let mut signing = vec![current.certificate_b64.clone()];
    let mut encryption = vec![current.certificate_b64];
    if let Some(next) = &cfg.sp_next_key {
        let k = keys::load(&next.private_key_pem, &next.certificate_pem).map_err(config_error)?;
        signing.push(k.certificate_b64.clone());
        encryption.push(k.certificate_b64);
    }
    if let Some(prev) = cfg.sp_previous_key.as_ref().filter(|k| k.live(now)) {
        let k = keys::load(&prev.private_key_pem, &prev.certificate_pem).map_err(config_error)?;
        encryption.push(k.certificate_b64);
    }
    Ok(metadata::sp_metadata(
        &entity,
        &acs,
        &signing,
        &encryption,
        cfg.sign_authn_requests || cfg.want_authn_requests_signed,
    ))
}

struct Inner {
    cfg: SamlConfig,
    tenant: String,
    connection: String,
    sp_entity_id: String,
    acs_url: String,
    /// The IdP's signing keys, loaded into xmlsec once for this connector.
    idp_keys: dsig::IdpKeys,
    keys: keys::SpKeyMaterial,
    /// Every SP key that may decrypt: current, next, previous (with the
    /// moment the previous one stops counting).
    decrypt_keys: Vec<(
        openssl::pkey::PKey<openssl::pkey::Private>,
        Option<chrono::DateTime<chrono::Utc>>,
    )>,
    skew: chrono::Duration,
}

/// The SAML connector for one connection.
pub struct SamlConnector {
    inner: Arc<Inner>,
    ctx: UpstreamContext,
}

/// What `begin` hands the broker to keep until the response arrives.
#[derive(Debug, Serialize, Deserialize)]
struct PendingState {
    request_id: String,
}

impl SamlConnector {
    /// Builds the connector, parsing certificates and keys once.
    pub fn new(connection: &Connection, cfg: SamlConfig, ctx: UpstreamContext) -> Result<Self, UpstreamError> {
        xml::init();
        let certs = cfg
            .idp_certificates
            .iter()
            .map(|b64| {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|_| config_error("an IdP certificate is not base64"))?;
                openssl::x509::X509::from_der(&der).map_err(|_| config_error("an IdP certificate is not X.509"))?;
                Ok(der)
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        if certs.is_empty() {
            return Err(config_error("no IdP signing certificate"));
        }
        // Once per built connector (cached per stored revision), never per response.
        let idp_keys = dsig::IdpKeys::load(&certs).map_err(config_error)?;
        if cfg.allowed_algorithms.is_empty() {
            return Err(config_error("no allowed signature algorithm"));
        }
        // Stored before the URL rule existed, or edited in the store: the
        // browser is never sent to an endpoint the rule refuses.
        let allow_private = ctx.http.config().allow_private_networks;
        for url in [&cfg.sso_redirect_url, &cfg.sso_post_url].into_iter().flatten() {
            metadata::check_idp_url(url, allow_private).map_err(|e| config_error(format!("SSO endpoint {e}")))?;
        }
        let keys = keys::load(&cfg.sp_private_key_pem, &cfg.sp_certificate_pem).map_err(config_error)?;
        let mut decrypt_keys = vec![(keys.key.clone(), None)];
        for extra in [&cfg.sp_next_key, &cfg.sp_previous_key].into_iter().flatten() {
            let k = keys::load(&extra.private_key_pem, &extra.certificate_pem).map_err(config_error)?;
            decrypt_keys.push((k.key, extra.retire_at));
        }
        let skew_secs = cfg
            .clock_skew_secs
            .unwrap_or(ctx.clock_skew_secs)
            .clamp(0, MAX_CLOCK_SKEW_SECS);
        let (sp_entity_id, acs_url) = effective_sp(&ctx, connection, &cfg);
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: cfg.built(),
                tenant: connection.tenant.to_string(),
                connection: connection.id.to_string(),
                sp_entity_id,
                acs_url,
                idp_keys,
                keys,
                decrypt_keys,
                skew: chrono::Duration::seconds(skew_secs),
            }),
            ctx,
        })
    }
}

impl SamlConfig {
    /// What a built connector keeps of its configuration: everything but
    /// the sources of what it parsed once (the metadata document, the
    /// certificates and the PEM keys), which it holds parsed instead. The
    /// metadata alone is 2 to 15 KB per connection in the vendors'
    /// captures, and a replica keeps up to `[upstream] cached_connections`
    /// connectors.
    fn built(self) -> Self {
        Self {
            metadata_xml: String::new(),
            idp_certificates: Vec::new(),
            sp_private_key_pem: crate::secret::Secret::default(),
            sp_certificate_pem: String::new(),
            sp_next_key: None,
            sp_previous_key: None,
            ..self
        }
    }
}

impl Inner {
    fn reject(&self, r: validate::Reject) -> UpstreamError {
        tracing::warn!(
            code = r.reason.code(),
            tenant = %self.tenant,
            connection = %self.connection,
            detail = %r.detail,
            "SAML response rejected"
        );
        let message = r.message.unwrap_or_else(|| r.reason.message().to_owned());
        UpstreamError::reject(r.reason.code(), message, r.detail)
    }
}

/// Responses up to this size (the base64 form value, about 24 KB of XML;
/// the vendors' captures in `tests/fixtures` are 5-7 KB) validate in place
/// on a replica that may use one CPU ([`in_place_bytes_for`]).
pub const IN_PLACE_FORM_BYTES: usize = 32 * 1024;

/// How large a response may be to validate on the async worker, for a
/// process that may use `cpus` CPUs: [`IN_PLACE_FORM_BYTES`] with one, none
/// with more. The XML work is CPU-bound, so it runs on the blocking pool,
/// beside the workers, where there is another CPU to run it on. With one
/// CPU there is not: a blocking thread takes turns with the one worker on
/// that CPU, each waiting for the other (0.10 ms of waiting per ACS and
/// 0.24 ms of the gateway's per sign-in at half load), for a validation of
/// 0.2 ms that the kernel would seldom cut short anyway (its slices are
/// longer). In place, the ACS cost 9 % less CPU at saturation and a
/// sign-in 4 % less at half load, whose p99 fell from 10.8-14.5 to 8.3-10.6
/// ms (docs/performance-log.md, thirty-fifth pass). Larger responses still go
/// to the blocking pool, where the kernel time-slices a long parse with
/// the worker.
pub fn in_place_bytes_for(cpus: usize) -> usize {
    if cpus == 1 {
        IN_PLACE_FORM_BYTES
    } else {
        0
    }
}

/// How long an accepted assertion's id stays in the replay cache: until
/// `usable_until` (the last instant any window could still accept it), the
/// part of a second rounded up, plus a second for replicas whose clocks
/// differ a little. Rounded down, a replay in the window's last second would
/// find the entry gone and be accepted.
fn replay_ttl(usable_until: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> std::time::Duration {
    let millis = (usable_until - now).num_milliseconds().max(0);
    let secs = millis.saturating_add(999) / 1000 + 1;
    std::time::Duration::from_secs(secs.unsigned_abs())
}

/// The validations that may run at once: twice the cores (at least two).
fn validation_slots() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Arc::new(tokio::sync::Semaphore::new(cores.saturating_mul(2).max(2)))
    })
}

#[async_trait]
impl Connector for SamlConnector {
    fn mfa_contexts(&self) -> Vec<String> {
        if self.inner.cfg.mfa_authn_contexts.is_empty() {
            crate::upstream::DEFAULT_MFA_CONTEXTS
                .iter()
                .map(|c| (*c).to_owned())
                .collect()
        } else {
            self.inner.cfg.mfa_authn_contexts.clone()
        }
    }

    fn max_session_secs(&self) -> Option<i64> {
        self.inner.cfg.max_session_secs.and_then(|s| i64::try_from(s).ok())
    }

    async fn begin(&self, req: BeginRequest<'_>) -> Result<BeginLogin, UpstreamError> {
        let inner = &self.inner;
        let id = request::new_request_id();
        let sign = inner.cfg.sign_authn_requests || inner.cfg.want_authn_requests_signed;
        let keys = sign.then_some(&inner.keys);
        let destination = inner
            .cfg
            .sso_redirect_url
            .as_deref()
            .or(inner.cfg.sso_post_url.as_deref())
            .ok_or_else(|| config_error("no SSO endpoint"))?;
        let params = request::AuthnRequestParams {
            id: &id,
            issue_instant: self.ctx.clock.now(),
            destination,
            acs_url: &inner.acs_url,
            sp_entity_id: &inner.sp_entity_id,
            force_authn: req.force_authn,
            requested_authn_context: req.require_mfa.then(|| self.mfa_contexts()),
        };
        let redirect = match &inner.cfg.sso_redirect_url {
            Some(url) => request::redirect(url, &request::authn_request_xml(&params, None), req.login_id, keys)?,
            None => request::post(destination, &params, req.login_id, keys)?,
        };
        let state = serde_json::to_value(PendingState { request_id: id })
            .map_err(|e| UpstreamError::internal("saml.state", e.to_string()))?;
        Ok(BeginLogin { redirect, state })
    }

    fn login_id<'p>(&self, params: &'p CallbackParams) -> Option<&'p str> {
        params.form.get("RelayState").map(String::as_str)
    }

    fn unsolicited_target(&self) -> Option<(String, Url)> {
        let cfg = &self.inner.cfg;
        if !cfg.allow_idp_initiated {
            return None;
        }
        Some((cfg.default_client_id.clone()?, cfg.redirect_uri.clone()?))
    }

    async fn complete(
        &self,
        pending: Option<&serde_json::Value>,
        params: &CallbackParams,
    ) -> Result<Identity, UpstreamError> {
        let (identity, claim) = self.complete_unclaimed(pending, params).await?;
        if let Some(claim) = claim {
            claim.await?;
        }
        Ok(identity)
    }

    async fn complete_unclaimed(
        &self,
        pending: Option<&serde_json::Value>,
        params: &CallbackParams,
    ) -> Result<(Identity, Option<Claim>), UpstreamError> {
        let expected = match pending {
            Some(v) => Some(
                serde_json::from_value::<PendingState>(v.clone())
                    .map_err(|e| UpstreamError::internal("saml.state", e.to_string()))?
                    .request_id,
            ),
            None if self.inner.cfg.allow_idp_initiated => None,
            None => {
                return Err(self.inner.reject(validate::Reject::new(
                    SamlReason::UnsolicitedNotAllowed,
                    "unsolicited response and IdP-initiated login is off",
                )))
            }
        };
        let form = params.form.get("SAMLResponse").cloned().ok_or_else(|| {
            self.inner.reject(validate::Reject::new(
                SamlReason::MissingResponse,
                "no SAMLResponse field",
            ))
        })?;
        if form.len() > validate::MAX_FORM_BYTES {
            return Err(self.inner.reject(validate::Reject::new(
                SamlReason::TooLarge,
                "SAMLResponse exceeds the size limit",
            )));
        }
        let inner = Arc::clone(&self.inner);
        let now = self.ctx.clock.now();
        // `portcullis_upstream_duration_seconds{op="saml_acs"}`: the wait for a
        // validation slot included, as the person waiting sees it.
        let started = std::time::Instant::now();
        // Bound the CPU work in flight: a flood of posts queues here instead of
        // growing tokio's blocking pool to hundreds of busy threads.
        let permit = Arc::clone(validation_slots())
            .acquire_owned()
            .await
            .map_err(|e| UpstreamError::internal("saml.validation_task", e.to_string()))?;
        // libxml2/xmlsec work is CPU-bound and blocking: off the async
        // workers, except an ordinary response on a replica with one CPU
        // (`in_place_bytes_for`).
        let in_place = !form.is_empty() && form.len() <= self.ctx.saml_in_place_bytes;
        let work = move || {
            // Held by the validation itself, so a dropped request cannot
            // free the slot while a blocking task still runs it.
            let _permit = permit;
            let policy = validate::Policy {
                idp_entity_id: &inner.cfg.idp_entity_id,
                keys: &inner.idp_keys,
                allowed: &inner.cfg.allowed_algorithms,
                sp_entity_id: &inner.sp_entity_id,
                acs_url: &inner.acs_url,
                now,
                skew: inner.skew,
                expected_in_response_to: expected.as_deref(),
                want_encrypted: inner.cfg.want_encrypted_assertions,
                sp_keys: &inner
                    .decrypt_keys
                    .iter()
                    .filter(|(_, retire_at)| retire_at.is_none_or(|t| now < t))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>(),
                mapping: &inner.cfg.attribute_mapping,
            };
            validate::validate(&form, &policy)
        };
        let outcome = if in_place {
            work()
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| UpstreamError::internal("saml.validation_task", e.to_string()))?
        };
        crate::meter::upstream("saml_acs", started.elapsed(), outcome.is_ok());
        let mut validated = outcome.map_err(|r| self.inner.reject(r))?;
        // SAML has no "verified" flag: the connection's setting is the IdP's
        // word, and the broker narrows it to the tenant's domains.
        validated.identity.email_verified =
            Some(self.inner.cfg.trust_email_verified && validated.identity.email.is_some());

        // Replay: the assertion id is single-use within this tenant's connection
        // for as long as the assertion could be accepted (every assertion is
        // treated as OneTimeUse; see `assertion::check` for the TTL).
        let ttl = replay_ttl(validated.usable_until, now);
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            format!("{}\n{}", self.inner.cfg.idp_entity_id, validated.assertion_id).as_bytes(),
        ));
        let key = Key::tenant(
            &self.inner.tenant,
            "saml-replay",
            format!("{}:{digest}", self.inner.connection),
        );
        // The claim runs when the caller awaits it (see `complete_unclaimed`).
        let (store, inner, one_time_use) = (self.ctx.store.clone(), Arc::clone(&self.inner), validated.one_time_use);
        let claim: Claim = Box::pin(async move {
            let fresh = store
                .put_if_absent(&key, b"1", Some(ttl))
                .await
                .map_err(|e| UpstreamError::internal("saml.store", e.to_string()))?;
            if !fresh {
                return Err(inner.reject(validate::Reject::new(SamlReason::Replay, "assertion id already used")));
            }
            tracing::info!(
                code = "saml.accepted",
                tenant = %inner.tenant,
                connection = %inner.connection,
                one_time_use,
                "SAML response accepted"
            );
            Ok(())
        });
        Ok((validated.identity, Some(claim)))
    }
}

#[cfg(test)]
mod replay_tests {
    use super::replay_ttl;
    use chrono::{TimeZone, Utc};
    use std::time::Duration;

    #[test]
    fn the_replay_entry_outlives_the_last_instant_the_assertion_is_accepted() {
        let until = Utc.with_ymd_and_hms(2030, 1, 1, 12, 5, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(500);
        // 299.5 s of acceptance left: the entry lives 300 s and one more.
        assert_eq!(replay_ttl(until, now), Duration::from_secs(301));
        assert!(now + chrono::Duration::from_std(replay_ttl(until, now)).unwrap() > until);
        assert_eq!(
            replay_ttl(until, until - chrono::Duration::seconds(10)),
            Duration::from_secs(11)
        );
        // Already past: still kept a moment (a store TTL is never zero).
        assert_eq!(
            replay_ttl(until, until + chrono::Duration::seconds(3)),
            Duration::from_secs(1)
        );
    }
}
