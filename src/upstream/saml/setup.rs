//! Admin setup of a SAML connection: request body to stored [`SamlConfig`].

use super::mapping::AttributeMapping;
use super::signature::SignatureAlgorithm;
use super::{keys, metadata, SamlConfig, MAX_CLOCK_SKEW_SECS};
use crate::ids::{ConnectionId, TenantId};
use crate::upstream::http::CappedError;
use crate::upstream::{SetupError, UpstreamContext};
use serde::Deserialize;
use url::Url;

/// The admin request body of a SAML connection (without `id` and `kind`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamlConnectionRequest {
    #[serde(default)]
    metadata_xml: Option<String>,
    #[serde(default)]
    metadata_url: Option<Url>,
    /// Picks one IdP out of federation metadata (an EntitiesDescriptor).
    #[serde(default)]
    idp_entity_id: Option<String>,
    #[serde(default)]
    attribute_mapping: AttributeMapping,
    #[serde(default)]
    allow_idp_initiated: bool,
    #[serde(default)]
    default_client_id: Option<String>,
    #[serde(default)]
    redirect_uri: Option<Url>,
    #[serde(default)]
    sign_authn_requests: bool,
    #[serde(default)]
    want_encrypted_assertions: bool,
    #[serde(default)]
    allowed_algorithms: Option<Vec<SignatureAlgorithm>>,
    #[serde(default)]
    clock_skew_secs: Option<i64>,
    #[serde(default)]
    trust_email_verified: bool,
    max_session_secs: Option<u64>,
    /// A migrated SP entity id (platform admin only, checked by the caller).
    #[serde(default)]
    sp_entity_id: Option<String>,
    /// A migrated ACS URL on this gateway's origin (platform admin only).
    #[serde(default)]
    acs_url: Option<Url>,
    /// Seconds after `activate` until the previous SP key is retired automatically.
    #[serde(default)]
    sp_key_overlap_secs: Option<u64>,
    /// The `AuthnContextClassRef`s that mean MFA at this IdP.
    #[serde(default)]
    mfa_authn_contexts: Vec<String>,
}

/// Paths the gateway serves itself: a migrated ACS URL may not shadow them.
const RESERVED_PATHS: [&str; 12] = [
    "/authorize",
    "/token",
    "/userinfo",
    "/revoke",
    "/introspect",
    "/logout",
    "/jwks",
    "/healthz",
    "/readyz",
    "/.well-known/",
    "/admin/",
    "/oidc/",
];

/// The request-shaped view of a stored configuration (without the metadata
/// fields and `idp_entity_id`): the base a merge patch applies to.
pub fn request_view(cfg: &SamlConfig) -> serde_json::Value {
    serde_json::json!({
        "attribute_mapping": cfg.attribute_mapping,
        "allow_idp_initiated": cfg.allow_idp_initiated,
        "default_client_id": cfg.default_client_id,
        "redirect_uri": cfg.redirect_uri,
        "sign_authn_requests": cfg.sign_authn_requests,
        "want_encrypted_assertions": cfg.want_encrypted_assertions,
        "allowed_algorithms": cfg.allowed_algorithms,
        "clock_skew_secs": cfg.clock_skew_secs,
        "trust_email_verified": cfg.trust_email_verified,
        "max_session_secs": cfg.max_session_secs,
        "sp_entity_id": cfg.sp_entity_id,
        "acs_url": cfg.acs_url,
        "sp_key_overlap_secs": cfg.sp_key_overlap_secs,
        "mfa_authn_contexts": cfg.mfa_authn_contexts,
    })
}

/// Validates a connection request (fetching `metadata_url` if given) and
/// returns the configuration to store. `request` is the admin body without
/// `id` and `kind`.
pub async fn setup(
    request: serde_json::Value,
    ctx: &UpstreamContext,
    tenant: &TenantId,
    connection: &ConnectionId,
) -> Result<SamlConfig, SetupError> {
    let req: SamlConnectionRequest = SetupError::from_json(request)?;
    build(req, ctx, tenant, connection, None).await
}

/// Re-validates a patched connection as a whole, exactly as at creation,
/// keeping the SP keys (and any rotation in progress). `request` is the
/// merged body: when it has neither `metadata_xml` nor `metadata_url`, the
/// stored metadata is re-read (nothing is fetched).
pub async fn setup_patched(
    request: serde_json::Value,
    ctx: &UpstreamContext,
    tenant: &TenantId,
    connection: &ConnectionId,
    existing: &SamlConfig,
) -> Result<SamlConfig, SetupError> {
    let req: SamlConnectionRequest = SetupError::from_json(request)?;
    build(req, ctx, tenant, connection, Some(existing)).await
}

/// The metadata text of a request (`metadata_xml`, or fetched from
/// `metadata_url`), with the field any error about it names.
async fn fetch_metadata(
    xml: Option<String>,
    url: Option<&Url>,
    ctx: &UpstreamContext,
) -> Result<(String, &'static str), SetupError> {
    Ok(match (xml, url) {
        (Some(_), Some(_)) => {
            return Err(SetupError::new(
                "metadata_url",
                "give either metadata_xml or metadata_url, not both",
            ))
        }
        (Some(xml), None) => {
            if xml.len() > metadata::MAX_METADATA_BYTES {
                return Err(too_large("metadata_xml"));
            }
            (xml, "metadata_xml")
        }
        (None, Some(url)) => {
            // The URL is kept as given and shown in the connection's view,
            // its audit events and the log lines of every fetch: a user name
            // or password in it would be too (hooks and the audit webhook
            // refuse them for the same reason).
            if metadata::carries_credentials(url) {
                tracing::info!(
                    reason = metadata::METADATA_URL_CREDENTIALS,
                    "a metadata URL carrying a user name or password refused"
                );
                return Err(SetupError::new(
                    "metadata_url",
                    format!(
                        "must not carry a user name or password: it is shown, audited and logged as given ({})",
                        metadata::METADATA_URL_CREDENTIALS
                    ),
                ));
            }
            let allow_private = ctx.http.config().allow_private_networks;
            metadata::check_idp_url(url.as_str(), allow_private).map_err(|m| SetupError::new("metadata_url", m))?;
            let bytes = match ctx
                .http
                .get_bytes_within(url, metadata::METADATA_ACCEPT, metadata::MAX_METADATA_BYTES)
                .await
            {
                Ok(bytes) => bytes,
                Err(CappedError::OverCap { .. }) => return Err(too_large("metadata_url")),
                Err(CappedError::Failed(e)) => {
                    tracing::info!(reason = e.code, detail = %e.detail, "SAML metadata could not be fetched for a connection's set-up");
                    return Err(SetupError::new(
                        "metadata_url",
                        format!("could not fetch the metadata: {}", e.for_admin()),
                    ));
                }
            };
            let xml =
                String::from_utf8(bytes).map_err(|_| SetupError::new("metadata_url", "the metadata is not UTF-8"))?;
            (xml, "metadata_url")
        }
        (None, None) => return Err(SetupError::new("metadata_xml", "give metadata_xml or metadata_url")),
    })
}

/// Metadata over [`metadata::MAX_METADATA_BYTES`], given in `field` or
/// fetched from it (`saml.metadata_too_large`).
fn too_large(field: &str) -> SetupError {
    tracing::info!(
        reason = metadata::METADATA_TOO_LARGE,
        field,
        "SAML metadata larger than one IdP's needs refused"
    );
    SetupError::new(
        field,
        format!(
            "the metadata is larger than {} KiB, far more than one IdP's metadata needs: give the IdP's own \
             metadata, not a federation's ({})",
            metadata::MAX_METADATA_BYTES / 1024,
            metadata::METADATA_TOO_LARGE
        ),
    )
}

/// Checks a migrated ACS URL: on this gateway's public origin, without query
/// or fragment, not shadowing a route the gateway serves. The canonical ACS
/// URL itself is no override (`None`).
fn check_acs_url(
    url: &Url,
    ctx: &UpstreamContext,
    tenant: &TenantId,
    connection: &ConnectionId,
) -> Result<Option<String>, SetupError> {
    if url.origin() != ctx.public_url.origin() {
        return Err(SetupError::new(
            "acs_url",
            format!(
                "must be on this gateway's origin {}",
                ctx.public_url.origin().ascii_serialization()
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SetupError::new("acs_url", "must have no query or fragment"));
    }
    let canonical = ctx.public(&format!("saml/{tenant}/{connection}/acs"));
    let path = url.path();
    if path == canonical.path() {
        return Ok(None);
    }
    let reserved = path == "/"
        || path.starts_with("/saml/")
        || RESERVED_PATHS
            .iter()
            .any(|r| path == r.trim_end_matches('/') || path.starts_with(r));
    if reserved {
        return Err(SetupError::new(
            "acs_url",
            format!("{path} is a path the gateway already serves"),
        ));
    }
    Ok(Some(url.to_string()))
}

async fn build(
    req: SamlConnectionRequest,
    ctx: &UpstreamContext,
    tenant: &TenantId,
    connection: &ConnectionId,
    existing: Option<&SamlConfig>,
) -> Result<SamlConfig, SetupError> {
    let mut wanted = req.idp_entity_id.clone();
    let (metadata_xml, metadata_url, field, given) = match (req.metadata_xml, req.metadata_url, existing) {
        // A patch that does not touch the metadata re-reads the stored one.
        (None, None, Some(e)) => {
            wanted.get_or_insert_with(|| e.idp_entity_id.clone());
            (e.metadata_xml.clone(), e.metadata_url.clone(), "metadata_xml", false)
        }
        (xml, url, _) => {
            let (xml, field) = fetch_metadata(xml, url.as_ref(), ctx).await?;
            (xml, url, field, true)
        }
    };
    let idp = metadata::parse_idp_metadata(
        &metadata_xml,
        wanted.as_deref(),
        ctx.http.config().allow_private_networks,
    )
    .map_err(|m| SetupError::new(field, m))?;
    // New metadata is held to what a refresh takes: a signing certificate
    // still valid now (one expired beside a valid one is a rollover). The
    // stored metadata a patch re-reads was judged when it came.
    if given && !metadata::any_certificate_current(&idp.signing_certificates, ctx.clock.unix()) {
        tracing::info!(
            reason = metadata::NO_USABLE_CERTIFICATE,
            tenant = %tenant,
            connection = %connection,
            "SAML metadata whose signing certificates have all expired refused"
        );
        return Err(SetupError::new(
            field,
            format!(
                "every signing certificate in the metadata has expired ({})",
                metadata::NO_USABLE_CERTIFICATE
            ),
        ));
    }
    let sp_entity_id = match req.sp_entity_id.map(|e| e.trim().to_owned()) {
        Some(e) if e.is_empty() || e.len() > 1024 => {
            return Err(SetupError::new("sp_entity_id", "must be 1 to 1024 characters"))
        }
        other => other,
    };
    let acs_url = match &req.acs_url {
        Some(u) => check_acs_url(u, ctx, tenant, connection)?,
        None => None,
    };
    if req
        .sp_key_overlap_secs
        .is_some_and(|s| !(60..=365 * 86_400).contains(&s))
    {
        return Err(SetupError::new(
            "sp_key_overlap_secs",
            "must be between 60 seconds and 365 days",
        ));
    }

    if req.allow_idp_initiated && (req.default_client_id.is_none() || req.redirect_uri.is_none()) {
        return Err(SetupError::new(
            if req.default_client_id.is_none() {
                "default_client_id"
            } else {
                "redirect_uri"
            },
            "IdP-initiated login needs default_client_id and redirect_uri",
        ));
    }
    if req.default_client_id.is_some() != req.redirect_uri.is_some() {
        return Err(SetupError::new(
            "redirect_uri",
            "default_client_id and redirect_uri go together",
        ));
    }
    let allowed_algorithms = match req.allowed_algorithms {
        Some(list) if list.is_empty() => return Err(SetupError::new("allowed_algorithms", "must not be empty")),
        Some(list) => list,
        None => SignatureAlgorithm::defaults(),
    };
    if allowed_algorithms.contains(&SignatureAlgorithm::RsaSha1) {
        tracing::warn!(
            tenant = %tenant,
            connection = %connection,
            "SAML connection accepts RSA-SHA1 signatures (explicit opt-in)"
        );
    }
    if let Some(skew) = req.clock_skew_secs {
        if !(0..=MAX_CLOCK_SKEW_SECS).contains(&skew) {
            return Err(SetupError::new(
                "clock_skew_secs",
                format!("must be between 0 and {MAX_CLOCK_SKEW_SECS}"),
            ));
        }
    }
    if req.max_session_secs.is_some_and(|m| !(60..=90 * 86_400).contains(&m)) {
        return Err(SetupError::new(
            "max_session_secs",
            "must be between 60 seconds and 90 days",
        ));
    }
    // A patch never regenerates the SP keys.
    let sp = match existing {
        Some(e) => keys::SpKeys {
            private_key_pem: e.sp_private_key_pem.clone(),
            certificate_pem: e.sp_certificate_pem.clone(),
        },
        None => keys::generate_off_worker(format!("Portcullis SAML SP {tenant}/{connection}"), ctx.clock.unix())
            .await
            .map_err(|_| SetupError::new("kind", "could not generate the SP key pair"))?,
    };
    if idp.want_authn_requests_signed && !req.sign_authn_requests {
        tracing::info!(tenant = %tenant, connection = %connection, "IdP wants signed AuthnRequests: signing them");
    }
    Ok(SamlConfig {
        metadata_xml,
        metadata_url,
        idp_entity_id: idp.entity_id,
        sso_redirect_url: idp.sso_redirect,
        sso_post_url: idp.sso_post,
        want_authn_requests_signed: idp.want_authn_requests_signed,
        idp_certificates: idp.signing_certificates,
        attribute_mapping: req.attribute_mapping,
        allow_idp_initiated: req.allow_idp_initiated,
        default_client_id: req.default_client_id,
        redirect_uri: req.redirect_uri,
        sign_authn_requests: req.sign_authn_requests,
        want_encrypted_assertions: req.want_encrypted_assertions,
        allowed_algorithms,
        clock_skew_secs: req.clock_skew_secs,
        trust_email_verified: req.trust_email_verified,
        max_session_secs: req.max_session_secs,
        mfa_authn_contexts: req.mfa_authn_contexts,
        sp_private_key_pem: sp.private_key_pem,
        sp_certificate_pem: sp.certificate_pem,
        sp_entity_id,
        acs_url,
        sp_next_key: existing.and_then(|e| e.sp_next_key.clone()),
        sp_previous_key: existing.and_then(|e| e.sp_previous_key.clone()),
        sp_key_overlap_secs: req.sp_key_overlap_secs,
    })
}
