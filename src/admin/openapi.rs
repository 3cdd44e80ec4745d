//! The OpenAPI 3.1 document of the admin API, generated with `utoipa` and
//! served at `GET /admin/v1/openapi.json` without a token (it describes
//! the API's shape, never its data).
//!
//! Each route is one `#[utoipa::path]` item below and one entry in
//! `paths(...)` of [`ApiDoc`]; `tests/api/openapi.rs` checks the document
//! against [`super::ROUTES`], the list the router is kept in step with.
//! The path items live here, not on the handlers, so that the files that
//! own the handlers stay free of documentation plumbing.

#![allow(dead_code)] // The path items are documentation only, never called.

use super::clients::{NewClient, RotateSecret};
use super::resources::{NewResourceServer, NewScope};
use super::tenants::NewTenant;
use crate::tenant::{Branding, Tenant, TenantSettings};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An `application/problem+json` error (RFC 9457).
#[derive(ToSchema)]
pub(crate) struct Problem {
    /// Always `about:blank`.
    #[schema(rename = "type")]
    r#type: String,
    /// A short summary of the status.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What is wrong, in a sentence.
    detail: String,
    /// The field at fault (a JSON path such as `settings.branding.logo_url`).
    field: Option<String>,
}

/// A JSON merge patch (RFC 7396) of a tenant: members absent stay, `null`
/// removes a setting.
#[derive(ToSchema)]
pub(crate) struct TenantMergePatch {
    /// Display name (cannot be removed).
    name: Option<String>,
    /// Email domains, declared by the platform admin (they count as verified).
    domains: Option<Vec<String>>,
    /// Settings to merge.
    settings: Option<TenantSettings>,
}

/// A tenant as the API shows it.
#[derive(ToSchema)]
pub(crate) struct TenantView {
    #[serde(flatten)]
    tenant: Tenant,
    /// The ids of the tenant's connections (on reads and updates).
    connections: Option<Vec<String>>,
}

/// One page of tenants.
#[derive(ToSchema)]
pub(crate) struct TenantPage {
    /// The tenants, ordered by id.
    tenants: Vec<Tenant>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// An app as the API shows it (never a secret or its hash).
#[derive(ToSchema)]
pub(crate) struct ClientView {
    client_id: String,
    name: String,
    public: bool,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    allowed_tenants: Vec<String>,
    allowed_scopes: Vec<String>,
    grant_types: Vec<String>,
    default_resource: Option<String>,
    /// RFC 3339.
    created_at: String,
    /// The secret, shown once at creation (confidential apps only).
    client_secret: Option<String>,
}

/// A JSON merge patch (RFC 7396) of an app; validated as at creation.
#[derive(ToSchema)]
pub(crate) struct ClientMergePatch {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    post_logout_redirect_uris: Option<Vec<String>>,
    allowed_tenants: Option<Vec<String>>,
    allowed_scopes: Option<Vec<String>>,
    grant_types: Option<Vec<String>>,
    default_resource: Option<String>,
}

/// One page of apps.
#[derive(ToSchema)]
pub(crate) struct ClientPage {
    clients: Vec<ClientView>,
    next_cursor: Option<String>,
}

/// The answer to a secret rotation.
#[derive(ToSchema)]
pub(crate) struct RotatedSecret {
    /// The new secret, shown once.
    client_secret: String,
    /// When the previous secret stops working (RFC 3339).
    previous_expires_at: String,
}

/// A JSON object whose members the route's documentation describes in prose
/// (connections, resource servers, users, keys).
pub(crate) struct Object;

impl utoipa::PartialSchema for Object {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Object)
            .into()
    }
}

impl ToSchema for Object {}

/// Registers the bearer scheme every route but this document requires.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis admin API", description = "The platform admin API. Errors are application/problem+json naming the field at fault."),
    security(("bearer" = [])),
    modifiers(&Bearer),
    paths(
        tenants_create, tenants_list, tenants_get, tenants_patch, tenants_delete,
        connections_create, connections_list, connections_get, connections_delete,
        clients_create, clients_list, clients_get, clients_patch, clients_delete, clients_rotate_secret,
        resource_servers_create, resource_servers_list, resource_servers_get, resource_servers_delete,
        users_list, users_get, users_delete, users_disable, users_enable,
        keys_rotate,
        connections_patch, connections_enable, connections_disable, connections_refresh, connections_sp_certificates, setuplinks_create, apikeys_create_tenant, apikeys_list_tenant, apikeys_delete_tenant, audit_tenant, apikeys_create, apikeys_list, apikeys_delete, audit_platform, domains_claim, domains_list, domains_get, domains_delete, domains_verify, tenants_mfa
    ),
    components(schemas(Problem, Tenant, TenantSettings, Branding, NewTenant, TenantMergePatch, TenantView, TenantPage,
        NewClient, ClientView, ClientMergePatch, ClientPage, RotateSecret, RotatedSecret, NewResourceServer, NewScope))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    // Serializing a document built from static parts cannot fail; should it,
    // the answer is an empty object rather than a panic.
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_owned())
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn tenants_create() {}

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "tenants",
    params(("limit" = Option<u32>, Query, description = "1 to 200, default 50", minimum = 1, maximum = 200),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("domain" = Option<String>, Query, description = "only the tenant owning this domain"),
        ("name_prefix" = Option<String>, Query, description = "names starting with this"),
        ("q" = Option<String>, Query, description = "id, name or a domain containing this")),
    responses((status = 200, body = TenantPage), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
fn tenants_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = TenantView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn tenants_get() {}

#[utoipa::path(patch, path = "/admin/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    request_body(content = TenantMergePatch, content_type = "application/merge-patch+json"),
    responses((status = 200, body = TenantView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
fn tenants_patch() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn tenants_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections", tag = "connections", params(("id" = String, Path)),
    request_body(content = Object, description = "kind (saml, oidc, dev), id, and the kind's settings"),
    responses((status = 201, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_create() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/connections", tag = "connections", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn connections_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/connections/{cid}", tag = "connections",
    params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn connections_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/connections/{cid}", tag = "connections",
    params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn connections_delete() {}

#[utoipa::path(post, path = "/admin/v1/clients", tag = "clients", request_body = NewClient,
    responses((status = 201, body = ClientView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn clients_create() {}

#[utoipa::path(get, path = "/admin/v1/clients", tag = "clients",
    params(("limit" = Option<u32>, Query, description = "1 to 200, default 50", minimum = 1, maximum = 200),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = ClientPage), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
fn clients_list() {}

#[utoipa::path(get, path = "/admin/v1/clients/{id}", tag = "clients", params(("id" = String, Path)),
    responses((status = 200, body = ClientView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn clients_get() {}

#[utoipa::path(patch, path = "/admin/v1/clients/{id}", tag = "clients", params(("id" = String, Path)),
    request_body(content = ClientMergePatch, content_type = "application/merge-patch+json"),
    responses((status = 200, body = ClientView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn clients_patch() {}

#[utoipa::path(delete, path = "/admin/v1/clients/{id}", tag = "clients", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn clients_delete() {}

#[utoipa::path(post, path = "/admin/v1/clients/{id}/secret/rotate", tag = "clients", params(("id" = String, Path)),
    request_body(content = Option<RotateSecret>),
    responses((status = 200, body = RotatedSecret), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn clients_rotate_secret() {}

#[utoipa::path(post, path = "/admin/v1/resource-servers", tag = "resource-servers",
    request_body = NewResourceServer,
    responses((status = 201, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_create() {}

#[utoipa::path(get, path = "/admin/v1/resource-servers", tag = "resource-servers",
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_list() {}

#[utoipa::path(get, path = "/admin/v1/resource-servers/{identifier}", tag = "resource-servers",
    params(("identifier" = String, Path, description = "the identifier (a URL) after the prefix")),
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_get() {}

#[utoipa::path(delete, path = "/admin/v1/resource-servers/{identifier}", tag = "resource-servers",
    params(("identifier" = String, Path, description = "the identifier (a URL) after the prefix")),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_delete() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/users", tag = "users",
    params(("id" = String, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/users/{sub}", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/users/{sub}", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/users/{sub}/disable", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_disable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/users/{sub}/enable", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_enable() {}

#[utoipa::path(post, path = "/admin/v1/keys/rotate", tag = "keys",
    responses((status = 200, body = Object, description = "the JWKS after rotation"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
fn keys_rotate() {}

#[utoipa::path(patch, path = "/admin/v1/tenants/{id}/connections/{cid}", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    request_body(content = Object, description = "a JSON merge patch of the connection (application/merge-patch+json or application/json); sp_entity_id and acs_url only by the platform admin"),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_patch() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/enable", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_enable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/disable", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_disable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/refresh", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
fn connections_refresh() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/sp-certificates/{step}", tag = "connections", params(("id" = String, Path), ("cid" = String, Path), ("step" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_sp_certificates() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/setup-links", tag = "setuplinks", params(("id" = String, Path)),
    request_body(content = Object, description = "ttl_secs (300 to 2592000) and kind (saml or oidc), both optional"),
    responses((status = 201, body = Object, description = "url, expires_at"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn setuplinks_create() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/api-keys", tag = "apikeys", params(("id" = String, Path)),
    request_body(content = Object, description = "name and scopes (read, write), both optional"),
    responses((status = 201, body = Object, description = "key, shown once"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_create_tenant() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/api-keys", tag = "apikeys", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_list_tenant() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/api-keys/{kid}", tag = "apikeys", params(("id" = String, Path), ("kid" = String, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_delete_tenant() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/audit", tag = "audit", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn audit_tenant() {}

#[utoipa::path(post, path = "/admin/v1/api-keys", tag = "apikeys",
    request_body(content = Object, description = "name and scopes (read, write)"),
    responses((status = 201, body = Object, description = "key, shown once"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_create() {}

#[utoipa::path(get, path = "/admin/v1/api-keys", tag = "apikeys",
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_list() {}

#[utoipa::path(delete, path = "/admin/v1/api-keys/{kid}", tag = "apikeys", params(("kid" = String, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_delete() {}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit",
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn audit_platform() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/domains", tag = "domains", params(("id" = String, Path)),
    request_body(content = Object, description = "domain"),
    responses((status = 201, body = Object, description = "verification: the DNS TXT record to publish"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn domains_claim() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/domains", tag = "domains", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn domains_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/domains/{domain}", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn domains_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/domains/{domain}", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn domains_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/domains/{domain}/verify", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    request_body(content = Object, description = "override (platform admin only), optional"),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn domains_verify() {}

#[utoipa::path(put, path = "/admin/v1/tenants/{id}/mfa", tag = "tenants", params(("id" = String, Path)),
    request_body(content = Object, description = "required: whether sign-ins need MFA at the IdP"),
    responses((status = 200, body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn tenants_mfa() {}
