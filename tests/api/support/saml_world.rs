//! The SAML end-to-end fixture: the gateway over a real Redis, tenant `acme`
//! with a SAML connection to the samlify IdP peer (metadata exchanged both
//! ways, as an admin would), and one openid-client app.

use serde_json::{json, Value};
use url::Url;

use super::app::{spawn_app, AppOptions, TestApp};
use super::peers::{RelyingParty, SamlIdp};
use super::redis;

/// The tenant.
pub const TENANT: &str = "acme";
/// The SAML connection id.
pub const SAML_CONN: &str = "corp-saml";

/// Everything a SAML flow test needs.
pub struct SamlWorld {
    /// The gateway.
    pub app: TestApp,
    /// The SAML IdP.
    pub idp: SamlIdp,
    /// The app (client `saml-app`).
    pub rp: RelyingParty,
    /// The admin API's answer for the connection (`acs_url`, ...).
    pub connection: Value,
}

impl SamlWorld {
    /// Builds the world; every step asserts its status.
    pub async fn new() -> Self {
        Self::build(false).await
    }

    /// Like [`SamlWorld::new`], but the connection only knows the IdP's
    /// HTTP-POST binding, so the AuthnRequest goes out through the gateway's
    /// auto-submitted form page.
    pub async fn with_post_binding() -> Self {
        Self::build(true).await
    }

    async fn build(post_binding: bool) -> Self {
        let app = spawn_app(AppOptions {
            redis_url: Some(redis::url()),
            redis_prefix: Some(redis::prefix()),
            ..AppOptions::default()
        })
        .await;
        Self::on(app, post_binding).await
    }

    /// Builds the world on a gateway already running (e.g. one of two
    /// replicas behind a round-robin proxy).
    pub async fn on(app: TestApp, post_binding: bool) -> Self {
        app.create_tenant(TENANT, "Acme Corp", &["acme.test"]).await;
        let idp = SamlIdp::spawn().await;
        let mut metadata = idp.metadata_xml().await;
        if post_binding {
            metadata = without_redirect_sso(&metadata);
        }
        let connection = app
            .create_saml_connection(TENANT, json!({ "id": SAML_CONN, "metadata_xml": metadata }))
            .await;
        let sp_metadata = app
            .client
            .get(connection["sp_metadata_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(sp_metadata.status(), 200);
        let entity_id = idp.register_sp(&sp_metadata.text().await.unwrap()).await;
        assert_eq!(Some(entity_id.as_str()), connection["sp_entity_id"].as_str());

        let rp = RelyingParty::spawn("saml-app", &app.base).await;
        let reg = app
            .create_client("saml-app", "SAML App", &[&rp.redirect_uri()], false)
            .await;
        rp.configure(
            "saml-app",
            reg.client_secret.as_deref().unwrap(),
            "basic",
            super::oidc_world::APP_SCOPE,
        )
        .await;
        Self {
            app,
            idp,
            rp,
            connection,
        }
    }

    /// The gateway's ACS URL for the connection.
    pub fn acs_url(&self) -> Url {
        Url::parse(self.connection["acs_url"].as_str().unwrap()).unwrap()
    }
}

/// `metadata` without its HTTP-Redirect `SingleSignOnService` elements.
fn without_redirect_sso(metadata: &str) -> String {
    let mut out = String::new();
    let mut rest = metadata;
    let mut skip_close = false;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').map(|i| start + i + 1).unwrap_or(rest.len());
        let tag = &rest[start..end];
        out.push_str(&rest[..start]);
        let is_sso = tag.contains("SingleSignOnService");
        if is_sso && tag.contains("HTTP-Redirect") {
            skip_close = !tag.ends_with("/>");
        } else if is_sso && tag.starts_with("</") && skip_close {
            skip_close = false;
        } else {
            out.push_str(tag);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    assert!(out.contains("HTTP-POST"), "no POST binding left: {out}");
    assert_eq!(out.matches("SingleSignOnService").count(), 2, "{out}");
    out
}
