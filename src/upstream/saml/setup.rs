//! Admin setup of a SAML connection: request body to stored [`SamlConfig`].

use super::mapping::AttributeMapping;
use super::signature::SignatureAlgorithm;
use super::{keys, metadata, SamlConfig, MAX_CLOCK_SKEW_SECS};
use crate::ids::{ConnectionId, TenantId};
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
    /// The `AuthnContextClassRef`s that mean MFA at this IdP.
    #[serde(default)]
    mfa_authn_contexts: Vec<String>,
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
    let (metadata_xml, field) = match (req.metadata_xml, &req.metadata_url) {
        (Some(_), Some(_)) => {
            return Err(SetupError::new(
                "metadata_url",
                "give either metadata_xml or metadata_url, not both",
            ))
        }
        (Some(xml), None) => (xml, "metadata_xml"),
        (None, Some(url)) => {
            let allow_private = ctx.http.config().allow_private_networks;
            metadata::check_idp_url(url.as_str(), allow_private).map_err(|m| SetupError::new("metadata_url", m))?;
            let bytes =
                ctx.http.get_bytes(url).await.map_err(|e| {
                    SetupError::new("metadata_url", format!("could not fetch the metadata: {}", e.detail))
                })?;
            let xml =
                String::from_utf8(bytes).map_err(|_| SetupError::new("metadata_url", "the metadata is not UTF-8"))?;
            (xml, "metadata_url")
        }
        (None, None) => return Err(SetupError::new("metadata_xml", "give metadata_xml or metadata_url")),
    };
    let idp = metadata::parse_idp_metadata(
        &metadata_xml,
        req.idp_entity_id.as_deref(),
        ctx.http.config().allow_private_networks,
    )
    .map_err(|m| SetupError::new(field, m))?;

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
    let sp = keys::generate(&format!("Portcullis SAML SP {tenant}/{connection}"), ctx.clock.unix())
        .map_err(|e| SetupError::new("kind", format!("could not generate the SP key pair: {e}")))?;
    if idp.want_authn_requests_signed && !req.sign_authn_requests {
        tracing::info!(tenant = %tenant, connection = %connection, "IdP wants signed AuthnRequests: signing them");
    }
    Ok(SamlConfig {
        metadata_xml,
        metadata_url: req.metadata_url,
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
        sp_entity_id: None,
        acs_url: None,
    })
}
