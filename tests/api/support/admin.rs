//! Admin API conveniences for tests: each call asserts the status the
//! contract promises and returns the JSON body.

use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use super::app::TestApp;

/// A client registered at the gateway.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    /// Its id.
    pub client_id: String,
    /// Its secret (confidential clients only; shown once at creation).
    pub client_secret: Option<String>,
}

/// The string `member` of each object in the array `list` of an answer,
/// e.g. the `id` of every entry of `exchange_rules`.
pub fn members<'a>(answer: &'a Value, list: &str, member: &str) -> Vec<&'a str> {
    answer[list]
        .as_array()
        .map(|items| items.iter().filter_map(|item| item[member].as_str()).collect())
        .unwrap_or_default()
}

impl TestApp {
    /// Sends an admin request with the platform token; returns status and
    /// JSON body (`Value::Null` when the body is empty or not JSON).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The events of `tenant`'s audit log doing `action`, newest first,
    /// read through the admin API (asserts 200).
    pub async fn tenant_audit(&self, tenant: &str, action: &str) -> Vec<Value> {
        let (status, log) = self
            .admin(reqwest::Method::GET, &format!("/admin/v1/tenants/{tenant}/audit"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{log}");
        log["events"]
            .as_array()
            .map(|events| events.iter().filter(|e| e["action"] == action).cloned().collect())
            .unwrap_or_default()
    }

    /// POSTs `body` to the admin API at `path` and asserts 201 Created.
    pub async fn admin_create(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.admin(reqwest::Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::CREATED, "POST {path} {body} answered {answer}");
        answer
    }

    /// `POST /admin/v1/tenants`; asserts 201.
    pub async fn create_tenant(&self, id: &str, name: &str, domains: &[&str]) -> Value {
        self.admin_create(
            "/admin/v1/tenants",
            json!({ "id": id, "name": name, "domains": domains }),
        )
        .await
    }

    /// `DELETE /admin/v1/tenants/{id}`; asserts a 2xx.
    pub async fn delete_tenant(&self, id: &str) {
        let (status, answer) = self
            .admin(reqwest::Method::DELETE, &format!("/admin/v1/tenants/{id}"), None)
            .await;
        assert!(status.is_success(), "DELETE tenant {id}: {status} {answer}");
    }

    /// Adds an upstream OIDC connection; asserts 201 and that the returned
    /// `redirect_uri` is `{base}/oidc/{tenant}/{id}/callback`. Returns the body.
    pub async fn create_oidc_connection(
        &self,
        tenant: &str,
        id: &str,
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> Value {
        let answer = self
            .admin_create(
                &format!("/admin/v1/tenants/{tenant}/connections"),
                json!({
                    "id": id,
                    "kind": "oidc",
                    "issuer": issuer,
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "scopes": scopes,
                }),
            )
            .await;
        assert_eq!(
            answer["redirect_uri"].as_str(),
            Some(self.oidc_callback(tenant, id).as_str()),
            "redirect_uri of connection {tenant}/{id}"
        );
        answer
    }

    /// The redirect URI the gateway registers upstream for an OIDC connection.
    pub fn oidc_callback(&self, tenant: &str, connection: &str) -> Url {
        self.url(&format!("/oidc/{tenant}/{connection}/callback"))
    }

    /// Adds an upstream SAML connection. `body` carries `id` and
    /// `metadata_xml` or `metadata_url` (plus any options); `kind` is set
    /// here. Asserts 201 and the presence of `sp_entity_id`, `acs_url` and
    /// `sp_metadata_url`.
    pub async fn create_saml_connection(&self, tenant: &str, mut body: Value) -> Value {
        body["kind"] = json!("saml");
        let answer = self
            .admin_create(&format!("/admin/v1/tenants/{tenant}/connections"), body)
            .await;
        for key in ["sp_entity_id", "acs_url", "sp_metadata_url"] {
            assert!(answer[key].is_string(), "{key} missing in {answer}");
        }
        answer
    }

    /// `POST /admin/v1/clients`; asserts 201 and, for a confidential client,
    /// a `client_secret` in the answer.
    pub async fn create_client(
        &self,
        client_id: &str,
        name: &str,
        redirect_uris: &[&Url],
        public: bool,
    ) -> RegisteredClient {
        let uris: Vec<&str> = redirect_uris.iter().map(|u| u.as_str()).collect();
        let answer = self
            .admin_create(
                "/admin/v1/clients",
                json!({
                    "client_id": client_id,
                    "name": name,
                    "redirect_uris": uris,
                    "public": public,
                }),
            )
            .await;
        let client_secret = answer["client_secret"].as_str().map(str::to_owned);
        assert!(
            public || client_secret.is_some(),
            "no client_secret for confidential client {client_id}: {answer}"
        );
        RegisteredClient {
            client_id: client_id.to_owned(),
            client_secret,
        }
    }
}
