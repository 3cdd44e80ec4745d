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
use super::exchange_rules::{NewExchangeRule, NewWhen};
use super::resources::{NewResourceServer, NewScope};
use super::tenants::NewTenant;
use crate::tenant::{Branding, LocalMfa, Tenant, TenantLimit, TenantSettings, TenantThrottle};
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
    /// The stable reason code, on answers of the edge (`throttle.exceeded`,
    /// `request.body_too_large`...) and on the admin API's refusals of what
    /// a tenant file manages (409: `tenant.file_owned`,
    /// `connection.file_declared`).
    reason: Option<String>,
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

/// Any JSON value (the `before`/`after` states of an audit event).
pub(crate) struct AnyJson;

impl utoipa::PartialSchema for AnyJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .into()
    }
}

impl ToSchema for AnyJson {}

/// A connection's lifecycle state.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConnectionStatusName {
    /// Waits for a successful test sign-in; serves no users.
    PendingTest,
    /// Serves users.
    Active,
    /// Switched off by an admin; serves no users.
    Disabled,
}

/// A connection's protocol.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConnectionKindName {
    /// SAML 2.0.
    Saml,
    /// OpenID Connect.
    Oidc,
    /// The built-in development IdP (dev mode only).
    Dev,
    /// Local accounts: email and password kept by Portcullis.
    Local,
}

/// One SAML attribute name, or several in order of preference.
#[derive(ToSchema)]
#[serde(untagged)]
pub(crate) enum AttributeNames {
    /// A single attribute name.
    One(String),
    /// Attribute names; the first present wins.
    Many(Vec<String>),
}

/// Which SAML attributes give which profile member.
#[derive(ToSchema)]
pub(crate) struct AttributeMappingView {
    email: Option<AttributeNames>,
    name: Option<AttributeNames>,
    given_name: Option<AttributeNames>,
    family_name: Option<AttributeNames>,
    groups: Option<AttributeNames>,
    subject: Option<AttributeNames>,
}

/// Which ID token or userinfo claims give which profile member.
#[derive(ToSchema)]
pub(crate) struct ClaimMappingView {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    email_verified: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    given_name: String,
    #[serde(default)]
    family_name: String,
    #[serde(default)]
    groups: String,
}

/// An XML signature algorithm a SAML connection accepts.
#[derive(ToSchema)]
pub(crate) enum SamlAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "rsa-sha384")]
    RsaSha384,
    #[serde(rename = "rsa-sha512")]
    RsaSha512,
    #[serde(rename = "ecdsa-sha256")]
    EcdsaSha256,
    #[serde(rename = "ecdsa-sha384")]
    EcdsaSha384,
    #[serde(rename = "ecdsa-sha512")]
    EcdsaSha512,
    /// Only by explicit opt-in.
    #[serde(rename = "rsa-sha1")]
    RsaSha1,
}

/// The body of a connection's creation: `id`, `kind` and the kind's
/// settings. Members the kind does not know are refused.
#[derive(ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum NewConnection {
    /// A SAML 2.0 IdP: `metadata_xml` or `metadata_url` is needed.
    Saml {
        /// The connection id (letters, digits, `-`, `_`).
        id: String,
        /// `pending_test` keeps it from serving until a test sign-in; default `active`.
        status: Option<ConnectionStatusName>,
        /// The IdP's metadata document: at most 256 KiB (400
        /// `saml.metadata_too_large`), with a signing certificate still
        /// valid (400 `metadata.no_usable_certificate`).
        metadata_xml: Option<String>,
        /// Where to fetch (and refresh) the IdP's metadata, held to the
        /// same rules; shown as given, so no user name or password (400
        /// `saml.metadata_url_credentials`; one stored before is never
        /// fetched, its refresh refused with that code).
        metadata_url: Option<String>,
        /// Picks one IdP out of federation metadata.
        idp_entity_id: Option<String>,
        #[serde(default)]
        attribute_mapping: AttributeMappingView,
        #[serde(default)]
        allow_idp_initiated: bool,
        default_client_id: Option<String>,
        redirect_uri: Option<String>,
        #[serde(default)]
        sign_authn_requests: bool,
        #[serde(default)]
        want_encrypted_assertions: bool,
        allowed_algorithms: Option<Vec<SamlAlgorithm>>,
        clock_skew_secs: Option<i64>,
        #[serde(default)]
        trust_email_verified: bool,
        max_session_secs: Option<u64>,
        /// A migrated SP entity id (platform admin only).
        sp_entity_id: Option<String>,
        /// A migrated ACS URL on this gateway's origin (platform admin only).
        acs_url: Option<String>,
        /// Seconds after `activate` until the previous SP key is retired.
        sp_key_overlap_secs: Option<u64>,
        /// The `AuthnContextClassRef`s that mean MFA at this IdP.
        #[serde(default)]
        mfa_authn_contexts: Vec<String>,
    },
    /// An OpenID Connect IdP.
    Oidc {
        /// The connection id (letters, digits, `-`, `_`).
        id: String,
        /// `pending_test` keeps it from serving until a test sign-in; default `active`.
        status: Option<ConnectionStatusName>,
        /// The IdP's issuer identifier (no query, fragment, user name or
        /// password: 400 `oidc.issuer_credentials` for the last two).
        issuer: String,
        /// Our client id at the IdP.
        client_id: String,
        /// Our client secret at the IdP (write-only).
        client_secret: Option<String>,
        #[serde(default)]
        scopes: Vec<String>,
        #[serde(default)]
        claim_mapping: ClaimMappingView,
        /// Accepted ID token algorithms (asymmetric only).
        #[serde(default)]
        allowed_algorithms: Vec<String>,
        #[serde(default)]
        userinfo: bool,
        #[serde(default)]
        refresh_upstream: bool,
        /// 60 to 86400.
        refresh_interval_secs: Option<u64>,
        /// The `acr_values` that mean MFA at this IdP.
        #[serde(default)]
        acr_values: Vec<String>,
    },
    /// Local accounts (sign-up with a mailed code, sign-in with a password).
    Local {
        /// The connection id (letters, digits, `-`, `_`).
        id: String,
        /// `pending_test` keeps it from serving until a test sign-in; default `active`.
        status: Option<ConnectionStatusName>,
        #[serde(default)]
        password_policy: Option<crate::local::password::PasswordPolicy>,
        /// Whether people may sign up themselves (default true).
        allow_sign_up: Option<bool>,
        /// The verification message; `{code}` is required.
        verify_template: Option<crate::mail::MailTemplate>,
        /// The password-reset message; `{code}` is required.
        reset_template: Option<crate::mail::MailTemplate>,
        /// `password` (default) or `custom_challenge` (passwordless: the tenant's hook alone).
        sign_in: Option<crate::local::SignInMode>,
    },
}

/// A JSON merge patch (RFC 7396) of a connection: the members of its
/// kind's creation body (except `id` and `kind`); `null` removes a setting.
#[derive(ToSchema)]
pub(crate) struct ConnectionMergePatch {
    status: Option<ConnectionStatusName>,
    metadata_xml: Option<String>,
    metadata_url: Option<String>,
    idp_entity_id: Option<String>,
    attribute_mapping: Option<AttributeMappingView>,
    allow_idp_initiated: Option<bool>,
    default_client_id: Option<String>,
    redirect_uri: Option<String>,
    sign_authn_requests: Option<bool>,
    want_encrypted_assertions: Option<bool>,
    allowed_algorithms: Option<Vec<String>>,
    clock_skew_secs: Option<i64>,
    trust_email_verified: Option<bool>,
    max_session_secs: Option<u64>,
    sp_entity_id: Option<String>,
    acs_url: Option<String>,
    sp_key_overlap_secs: Option<u64>,
    mfa_authn_contexts: Option<Vec<String>>,
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Option<Vec<String>>,
    claim_mapping: Option<ClaimMappingView>,
    userinfo: Option<bool>,
    refresh_upstream: Option<bool>,
    refresh_interval_secs: Option<u64>,
    acr_values: Option<Vec<String>>,
    password_policy: Option<crate::local::password::PasswordPolicy>,
    allow_sign_up: Option<bool>,
    verify_template: Option<crate::mail::MailTemplate>,
    reset_template: Option<crate::mail::MailTemplate>,
    sign_in: Option<crate::local::SignInMode>,
}

/// What a certificate is for.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CertificateUse {
    /// The IdP signs with it.
    IdpSigning,
    /// We sign AuthnRequests with it.
    SpSigning,
    /// The IdP encrypts assertions to it.
    SpEncryption,
}

/// Where an SP certificate is in its rotation.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CertificateState {
    /// Published, not yet used.
    Next,
    /// Replaced; still decrypts until retired.
    Previous,
}

/// A certificate of a connection (never a private key).
#[derive(ToSchema)]
pub(crate) struct CertificateView {
    #[schema(rename = "use")]
    r#use: CertificateUse,
    /// RFC 3339.
    not_after: Option<String>,
    /// Hex.
    fingerprint_sha256: Option<String>,
    /// Absent for the certificate in use.
    state: Option<CertificateState>,
}

/// Why fetched metadata was not taken.
#[derive(ToSchema)]
pub(crate) struct RefreshProblemView {
    /// A stable reason code, such as `metadata.unreachable`.
    code: String,
    /// A sentence for the admin.
    detail: String,
}

/// The metadata refresh of a connection made from a metadata URL.
#[derive(ToSchema)]
pub(crate) struct MetadataRefreshView {
    /// RFC 3339.
    last_attempt_at: Option<String>,
    /// RFC 3339.
    last_success_at: Option<String>,
    /// RFC 3339.
    last_changed_at: Option<String>,
    /// The last refresh's problem; the last good metadata keeps serving.
    last_error: Option<RefreshProblemView>,
}

/// How close the IdP's signing certificate is to expiry.
#[derive(ToSchema)]
pub(crate) enum CertificateWarning {
    #[serde(rename = "30_days")]
    Days30,
    #[serde(rename = "14_days")]
    Days14,
    #[serde(rename = "3_days")]
    Days3,
    #[serde(rename = "expired")]
    Expired,
}

/// A connection as the API shows it (never a secret or private key). The
/// members of the other kinds are absent.
#[derive(ToSchema)]
pub(crate) struct ConnectionView {
    id: String,
    tenant: String,
    kind: ConnectionKindName,
    status: ConnectionStatusName,
    /// Changes on every update (a 64-bit number, as a string).
    revision: String,
    /// Empty for OIDC (its keys come from its JWKS).
    certificates: Vec<CertificateView>,
    /// SAML: the SP entity id the IdP knows.
    sp_entity_id: Option<String>,
    /// SAML: the ACS URL the IdP posts to.
    acs_url: Option<String>,
    /// SAML: our metadata, for the IdP.
    sp_metadata_url: Option<String>,
    idp_entity_id: Option<String>,
    /// SAML: where the metadata is fetched from (a user name or password
    /// stored before they were refused shows as `…@`).
    metadata_url: Option<String>,
    attribute_mapping: Option<AttributeMappingView>,
    allow_idp_initiated: Option<bool>,
    default_client_id: Option<String>,
    /// SAML: where IdP-initiated sign-ins go; OIDC: our callback at the IdP.
    redirect_uri: Option<String>,
    sign_authn_requests: Option<bool>,
    want_encrypted_assertions: Option<bool>,
    /// Accepted signature algorithms.
    allowed_algorithms: Option<Vec<String>>,
    clock_skew_secs: Option<i64>,
    trust_email_verified: Option<bool>,
    max_session_secs: Option<u64>,
    sp_key_overlap_secs: Option<u64>,
    mfa_authn_contexts: Option<Vec<String>>,
    /// OIDC.
    issuer: Option<String>,
    client_id: Option<String>,
    scopes: Option<Vec<String>>,
    claim_mapping: Option<ClaimMappingView>,
    userinfo: Option<bool>,
    refresh_upstream: Option<bool>,
    refresh_interval_secs: Option<u64>,
    /// Whether a client secret is set (it is never shown).
    client_secret_set: Option<bool>,
    /// On reads and updates of a connection made from a metadata URL.
    metadata_refresh: Option<MetadataRefreshView>,
    /// On reads and updates: when the IdP's earliest signing certificate expires (RFC 3339).
    certificate_expires_at: Option<String>,
    /// On reads and updates.
    certificate_warning: Option<CertificateWarning>,
    /// On a PATCH that changed the upstream issuer (OIDC `issuer`, SAML
    /// entity id) without `keep_users=true`: `true`, the connection's users
    /// started afresh (the old IdP's users and their tokens ended).
    users_renewed: Option<bool>,
    /// Local.
    password_policy: Option<crate::local::password::PasswordPolicy>,
    allow_sign_up: Option<bool>,
    verify_template: Option<crate::mail::MailTemplate>,
    reset_template: Option<crate::mail::MailTemplate>,
    sign_in: Option<crate::local::SignInMode>,
    /// Local: the sign-in page (apps reach it through `/authorize`).
    sign_in_url: Option<String>,
}

/// A tenant's connections.
#[derive(ToSchema)]
pub(crate) struct ConnectionList {
    connections: Vec<ConnectionView>,
}

/// A user of a tenant's directory.
#[derive(ToSchema)]
pub(crate) struct UserView {
    /// The subject issued to apps.
    sub: String,
    tenant: String,
    connection: String,
    upstream_subject: String,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    groups: Vec<String>,
    disabled: bool,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// A user's WebAuthn passkey.
#[derive(ToSchema)]
pub(crate) struct PasskeyView {
    /// The credential id (base64url).
    id: String,
    /// The name the person gave it.
    name: String,
    /// The connection it was registered from (passwordless sign-in there only).
    connection: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339; `null` if never used.
    last_used_at: Option<String>,
}

/// A user's passkeys.
#[derive(ToSchema)]
pub(crate) struct PasskeyList {
    passkeys: Vec<PasskeyView>,
}

/// A local account's state (`DISABLED` when an admin disabled it).
#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum LocalUserStatus {
    /// Signed up, email not confirmed: cannot sign in. Such an account
    /// expires 7 days after its last sign-up unless confirmed (or disabled
    /// by an admin), and is then no longer listed.
    Unconfirmed,
    /// Can sign in.
    Confirmed,
    /// Must set a new password through "forgot password" first.
    ResetRequired,
    /// Disabled by an admin.
    Disabled,
}

/// A local account (the password hash is never shown).
#[derive(ToSchema)]
pub(crate) struct LocalUserView {
    /// The address in the spelling the account is stored under: its one
    /// spelling (domain as A-labels, local part lower case in NFC), or for
    /// an account made before addresses had one, as it was typed then.
    email: String,
    status: LocalUserStatus,
    /// The upstream subject the directory maps to the tenant's `sub`.
    upstream_subject: String,
    given_name: Option<String>,
    family_name: Option<String>,
    /// Moved in by the user-migration hook.
    migrated: bool,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// The local accounts of a connection.
#[derive(ToSchema)]
pub(crate) struct LocalUserList {
    users: Vec<LocalUserView>,
}

/// A new local account: with a password it is `CONFIRMED`; without, it is
/// `RESET_REQUIRED` and the person sets one through "forgot password".
#[derive(ToSchema)]
pub(crate) struct NewLocalUser {
    /// Stored in its one spelling (domain as A-labels, local part lower
    /// case in NFC with full-width letters as ordinary ones); another
    /// spelling of an address that has an account is a conflict.
    email: String,
    /// Checked against the connection's password policy (write-only).
    password: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
}

/// One page of users.
#[derive(ToSchema)]
pub(crate) struct UserPage {
    users: Vec<UserView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// What an API key may do.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyScope {
    /// GET and HEAD.
    Read,
    /// Changes too.
    Write,
}

/// The body of an API key's creation (a platform key needs a name).
#[derive(ToSchema)]
pub(crate) struct NewApiKey {
    /// At most 100 characters.
    name: Option<String>,
    /// Default both.
    scopes: Option<Vec<KeyScope>>,
}

/// An API key (never the secret or its hash).
#[derive(ToSchema)]
pub(crate) struct ApiKeyView {
    id: String,
    name: String,
    scopes: Vec<KeyScope>,
    /// RFC 3339.
    created_at: String,
    /// Tenant keys only.
    tenant: Option<String>,
}

/// A new API key, with the key itself (shown once).
#[derive(ToSchema)]
pub(crate) struct CreatedApiKey {
    #[serde(flatten)]
    view: ApiKeyView,
    /// Use as `Authorization: Bearer`; only its hash is stored.
    key: String,
}

/// API keys.
#[derive(ToSchema)]
pub(crate) struct ApiKeyList {
    api_keys: Vec<ApiKeyView>,
}

/// What an audit event was about.
#[derive(ToSchema)]
pub(crate) struct AuditTargetView {
    /// `tenant`, `connection`, `client`, `user`, `api_key`...
    kind: String,
    id: String,
}

/// One change in an audit log (secrets redacted).
#[derive(ToSchema)]
pub(crate) struct AuditEventView {
    /// Random, unique per event (webhook receivers de-duplicate by it).
    id: String,
    /// `admin` (a change someone made) or `security` (sign-ins, token reuse, throttling).
    r#type: String,
    /// RFC 3339.
    at: String,
    /// `platform_token`, `platform_key:<id>`, `tenant_key:<id>`, `setup_link:<id>`, `system:<job>`,
    /// `user:<sub>`, `client:<client id>` or `anonymous`.
    actor: String,
    /// `area.verb_past`, such as `connection.updated`, `signin.succeeded`, `signin.failed`,
    /// `refresh.reuse_detected`, `code.reuse_detected`.
    action: String,
    /// `null` for platform-wide changes.
    tenant: Option<String>,
    target: AuditTargetView,
    /// The state before; `null` when it did not exist.
    #[schema(inline)]
    before: AnyJson,
    /// The state after; `null` when it no longer exists.
    #[schema(inline)]
    after: AnyJson,
    /// `success` or `failure` (security events only).
    outcome: Option<String>,
    /// The stable reason code of the decision (security events only).
    reason: Option<String>,
    /// The connection involved, if any.
    connection: Option<String>,
    /// The user's `sub`, once known.
    subject: Option<String>,
    /// The id of the request that caused the event (`""` for scheduled jobs).
    request_id: String,
}

/// One page of an audit log, newest first.
#[derive(ToSchema)]
pub(crate) struct AuditPage {
    events: Vec<AuditEventView>,
    /// Pass as `cursor` for the next (older) page.
    next_cursor: Option<String>,
}

/// The body of a domain claim.
#[derive(ToSchema)]
pub(crate) struct NewDomain {
    domain: String,
}

/// Which connections sign in a verified domain's users.
#[derive(ToSchema)]
pub(crate) struct DomainConnections {
    /// Connection ids of the tenant. Only these vouch for
    /// `email_verified` on the domain's addresses (the others' sign-ins get
    /// `email_verified: false`, reason `login.email_other_connection`), and a
    /// `login_hint` in the domain goes straight to them. `[]`: any
    /// connection of the tenant again.
    connections: Vec<String>,
}

/// The body of a domain check (optional).
#[derive(ToSchema)]
pub(crate) struct VerifyDomain {
    /// Mark verified without the DNS check (platform admin only).
    #[schema(rename = "override")]
    #[serde(default)]
    r#override: bool,
}

/// Who verified a domain.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VerifiedByName {
    /// The TXT record was found.
    Dns,
    /// Declared or overridden by the platform admin.
    PlatformAdmin,
}

/// The kind of a domain check.
#[derive(ToSchema)]
pub(crate) enum VerificationType {
    #[serde(rename = "dns-txt")]
    DnsTxt,
}

/// The DNS TXT record that proves a domain.
#[derive(ToSchema)]
pub(crate) struct DnsTxtVerification {
    #[schema(rename = "type")]
    r#type: VerificationType,
    /// The record's name.
    name: String,
    /// The record's value.
    value: String,
}

/// A domain of a tenant and whether it is verified.
#[derive(ToSchema)]
pub(crate) struct DomainView {
    domain: String,
    /// Only a verified domain routes users and vouches for emails.
    verified: bool,
    verified_by: Option<VerifiedByName>,
    /// While a claim is pending: the record to publish.
    verification: Option<DnsTxtVerification>,
    /// When the claim was made (RFC 3339), while one is pending.
    created_at: Option<String>,
    /// The connections the domain is assigned to (`PATCH` the domain);
    /// empty: any connection of the tenant.
    connections: Vec<String>,
}

/// A tenant's domains.
#[derive(ToSchema)]
pub(crate) struct DomainList {
    domains: Vec<DomainView>,
}

/// A connection kind a setup link may be limited to.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SetupLinkKind {
    Saml,
    Oidc,
}

/// The body of a setup link's creation.
#[derive(ToSchema)]
pub(crate) struct NewSetupLink {
    /// 300 to 2592000 seconds; default a week.
    #[schema(minimum = 300, maximum = 2592000)]
    ttl_secs: Option<u64>,
    /// Limits the link to one connection kind.
    kind: Option<SetupLinkKind>,
}

/// A new setup link: send `url` to the tenant's admin.
#[derive(ToSchema)]
pub(crate) struct SetupLinkView {
    id: String,
    /// One-time URL of the setup portal.
    url: String,
    /// RFC 3339.
    expires_at: String,
    kind: Option<SetupLinkKind>,
}

/// A setup link as listed (never its URL or token).
#[derive(ToSchema)]
pub(crate) struct SetupLinkEntry {
    id: String,
    kind: Option<SetupLinkKind>,
    /// RFC 3339.
    created_at: String,
    /// When it stops working unopened (RFC 3339).
    expires_at: String,
    /// Whether it was opened (a portal session may be live).
    opened: bool,
    /// When it was opened (RFC 3339).
    opened_at: Option<String>,
}

/// A tenant's setup links that can still be opened or whose portal session
/// may still be live, oldest first.
#[derive(ToSchema)]
pub(crate) struct SetupLinkList {
    setup_links: Vec<SetupLinkEntry>,
}

/// Whether a tenant's sign-ins need MFA at the IdP (body and answer).
#[derive(ToSchema)]
pub(crate) struct MfaSetting {
    required: bool,
}

/// The kind of a tenant's hook.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum HookKindName {
    PreTokenGeneration,
    UserMigration,
    PostConfirmation,
    CustomChallenge,
}

/// The body of `PUT /tenants/{id}/hooks/{kind}`.
#[derive(ToSchema)]
pub(crate) struct HookSetting {
    /// Where the hook is POSTed: https (http only to a loopback or private
    /// address when the gateway allows private networks); no credentials.
    url: String,
    /// The HMAC-SHA256 key of `Portcullis-Signature`, 32 to 512 characters.
    /// Left out: generated when the hook is created (and shown once), kept when it is replaced.
    #[schema(min_length = 32, max_length = 512)]
    secret: Option<String>,
    /// Timeout of one attempt in milliseconds (default from `[hooks]`).
    #[schema(minimum = 100)]
    timeout_ms: Option<u64>,
    /// Whether the hook's answers must carry a `Portcullis-Signature` over
    /// `<t>.<call id>.<body>` (left out: as before; off for a new hook).
    sign_answers: Option<bool>,
}

/// A tenant's hook.
#[derive(ToSchema)]
pub(crate) struct HookView {
    kind: HookKindName,
    url: String,
    timeout_ms: u64,
    /// Whether its answers must be signed.
    sign_answers: bool,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
    /// Only in the answer that generated it: the signing secret, shown once.
    secret: Option<String>,
}

/// A tenant's hooks.
#[derive(ToSchema)]
pub(crate) struct HookList {
    hooks: Vec<HookView>,
}

/// A scope of a resource server.
#[derive(ToSchema)]
pub(crate) struct ResourceScopeView {
    /// The scope name, as apps request it.
    name: String,
    /// What it lets an app do.
    description: String,
}

/// A resource server (an API) as the API shows it.
#[derive(ToSchema)]
pub(crate) struct ResourceServerView {
    /// The audience (a URL).
    identifier: String,
    name: String,
    scopes: Vec<ResourceScopeView>,
    /// RFC 3339.
    created_at: String,
    /// Per-route scope rules for forward auth.
    routes: Vec<RouteRuleView>,
}

/// A route rule of a resource server (forward auth).
#[derive(ToSchema)]
pub(crate) struct RouteRuleView {
    /// `/`-separated segments: literal, `*` (one segment), `**` (last: the
    /// rest), or holding `${sub}`/`${tenant}`.
    path: String,
    /// Upper-case methods; empty or absent: any.
    #[schema(required = false)]
    methods: Vec<String>,
    /// Scopes the token needs.
    #[schema(required = false)]
    scopes: Vec<String>,
}

/// The condition of an exchange rule.
#[derive(ToSchema)]
pub(crate) struct WhenView {
    claim: String,
    equals: String,
}

/// A token-exchange rule of a tenant.
#[derive(ToSchema)]
pub(crate) struct ExchangeRuleView {
    id: String,
    /// `null`: every user of the tenant.
    when: Option<WhenView>,
    /// The resource server's identifier.
    resource: String,
    scopes: Vec<String>,
    claims: std::collections::BTreeMap<String, String>,
    /// RFC 3339.
    created_at: String,
}

/// A tenant's exchange rules.
#[derive(ToSchema)]
pub(crate) struct ExchangeRuleList {
    exchange_rules: Vec<ExchangeRuleView>,
}

/// The resource servers.
#[derive(ToSchema)]
pub(crate) struct ResourceServerList {
    resource_servers: Vec<ResourceServerView>,
}

/// A public key (RFC 7517); the members depend on `kty`.
#[derive(ToSchema)]
pub(crate) struct JwkView {
    /// `RSA`, `EC` or `OKP`.
    kty: String,
    kid: Option<String>,
    #[schema(rename = "use")]
    r#use: Option<String>,
    alg: Option<String>,
    /// RSA modulus.
    n: Option<String>,
    /// RSA exponent.
    e: Option<String>,
    /// EC or OKP curve.
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// The published signing keys (public parts only).
#[derive(ToSchema)]
pub(crate) struct JwksView {
    keys: Vec<JwkView>,
}

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

/// The answers the edge may give on any route before the handler runs
/// (`http::edge`): request too large (413, 414, 431), over a rate limit
/// (429, with `Retry-After`), the store unreachable (503, with `Retry-After`).
struct EdgeAnswers;

impl Modify for EdgeAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let answers = [
            ("413", "The request body is too large for this route."),
            ("414", "The address is too long."),
            ("429", "Too many requests: retry after `Retry-After` seconds."),
            ("431", "The request headers are too large."),
            ("503", "Temporarily unavailable: retry after `Retry-After` seconds."),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for op in operations.into_iter().flatten() {
                for (status, description) in answers {
                    let content = ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build();
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content("application/problem+json", content)
                        .build();
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(response.into());
                }
            }
        }
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis admin API", description = "The platform admin API. Errors are application/problem+json naming the field at fault."),
    security(("bearer" = [])),
    modifiers(&Bearer, &EdgeAnswers),
    paths(
        tenants_create, tenants_list, tenants_get, tenants_patch, tenants_delete,
        connections_create, connections_list, connections_get, connections_delete,
        clients_create, clients_list, clients_get, clients_patch, clients_delete, clients_rotate_secret,
        resource_servers_create, resource_servers_list, resource_servers_get, resource_servers_delete,
        users_list, users_get, users_delete, users_disable, users_enable, users_mfa_reset, users_passkeys_list, users_passkeys_delete,
        local_users_create, local_users_list, local_users_get, local_users_delete, local_users_disable, local_users_enable, local_users_force_reset,
        keys_rotate,
        connections_patch, connections_enable, connections_disable, connections_refresh, connections_sp_certificates, setuplinks_create, setuplinks_list, setuplinks_revoke, apikeys_create_tenant, apikeys_list_tenant, apikeys_delete_tenant, audit_tenant, apikeys_create, apikeys_list, apikeys_delete, audit_platform, domains_claim, domains_list, domains_get, domains_delete, domains_assign, domains_verify, tenants_mfa,
        exchange_rules_create, exchange_rules_list, exchange_rules_get, exchange_rules_delete,
        hooks_list, hooks_get, hooks_put, hooks_delete
    ),
    components(schemas(Problem, Tenant, TenantSettings, LocalMfa, TenantThrottle, TenantLimit, Branding, NewTenant, TenantMergePatch, TenantView, TenantPage,
        NewClient, ClientView, ClientMergePatch, ClientPage, RotateSecret, RotatedSecret, NewResourceServer, NewScope,
        NewConnection, ConnectionMergePatch, ConnectionView, ConnectionList, CertificateView, MetadataRefreshView,
        UserView, UserPage, PasskeyView, PasskeyList, LocalUserView, LocalUserList, LocalUserStatus, NewLocalUser,
        crate::local::password::PasswordPolicy, crate::local::SignInMode, crate::mail::MailTemplate, NewApiKey, ApiKeyView, CreatedApiKey, ApiKeyList, AuditEventView, AuditPage,
        NewDomain, DomainConnections, VerifyDomain, DomainView, DomainList, NewSetupLink, SetupLinkView, SetupLinkEntry, SetupLinkList, MfaSetting, ResourceServerView, ResourceServerList, JwksView,
        RouteRuleView, NewExchangeRule, NewWhen, WhenView, ExchangeRuleView, ExchangeRuleList,
        HookKindName, HookSetting, HookView, HookList))
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
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id or a domain is taken, or a deletion of the id is under way (`reason`: `tenant.deletion_in_progress`): try again in a moment.", body = Problem, content_type = "application/problem+json")))]
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
    responses((status = 200, body = TenantView), (status = 400, description = "A field is invalid (`field` names it), e.g. `settings.allowed_clients` listing more than `MAX_ALLOWED_CLIENTS` (100) apps (`quota.allowed_clients`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A domain another tenant owns, or a new name or domains of a tenant that comes from a tenant file (`reason`: `tenant.file_owned`).", body = Problem, content_type = "application/problem+json")))]
fn tenants_patch() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant comes from a tenant file (`reason`: `tenant.file_owned`): remove or change the file instead; or another deletion of it is under way (`reason`: `tenant.deletion_in_progress`).", body = Problem, content_type = "application/problem+json")))]
fn tenants_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections", tag = "connections", params(("id" = String, Path)),
    request_body = NewConnection,
    responses((status = 201, body = ConnectionView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken, or a tenant admin's tenant already has the configured quota of connections (`[quotas] connections_per_tenant`, default 50; `reason`: `quota.connections`, the detail names the number; the platform admin is not held to it).", body = Problem, content_type = "application/problem+json"), (status = 429, description = "A tenant admin over one of its tenant's budgets, each the configured quota: outbound calls a minute for a `metadata_url` or `issuer` (`[quotas] outbound_per_minute`, default 30; `reason`: `quota.outbound`), SP key pairs a minute for a SAML connection (`[quotas] key_generations_per_minute`, default 10; `reason`: `quota.key_generations`); with `Retry-After`. The platform admin is not held to them.", body = Problem, content_type = "application/problem+json")))]
fn connections_create() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/connections", tag = "connections", params(("id" = String, Path)),
    responses((status = 200, body = ConnectionList), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn connections_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/connections/{cid}", tag = "connections",
    params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn connections_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/connections/{cid}", tag = "connections",
    params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A tenant file declares the connection (`reason`: `connection.file_declared`): change the file instead.", body = Problem, content_type = "application/problem+json")))]
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
    responses((status = 201, body = ResourceServerView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_create() {}

#[utoipa::path(get, path = "/admin/v1/resource-servers", tag = "resource-servers",
    responses((status = 200, body = ResourceServerList), (status = 401, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_list() {}

#[utoipa::path(get, path = "/admin/v1/resource-servers/{identifier}", tag = "resource-servers",
    params(("identifier" = String, Path, description = "the identifier (a URL) after the prefix")),
    responses((status = 200, body = ResourceServerView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_get() {}

#[utoipa::path(delete, path = "/admin/v1/resource-servers/{identifier}", tag = "resource-servers",
    params(("identifier" = String, Path, description = "the identifier (a URL) after the prefix")),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn resource_servers_delete() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/users", tag = "users",
    params(("id" = String, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = UserPage), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/users/{sub}", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = UserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/users/{sub}", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/users/{sub}/disable", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = UserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_disable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/users/{sub}/enable", tag = "users",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = UserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_enable() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/users/{sub}/mfa", tag = "users",
    description = "Removes the user's TOTP enrolment, recovery codes and passkeys; where the tenant requires MFA the next sign-in enrols again.",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_mfa_reset() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/users/{sub}/passkeys", tag = "users",
    description = "The user's WebAuthn passkeys (names, dates; no key material).",
    params(("id" = String, Path), ("sub" = String, Path)),
    responses((status = 200, body = PasskeyList), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn users_passkeys_list() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/users/{sub}/passkeys/{pid}", tag = "users",
    description = "Removes one passkey of the user (its next use is refused). The MFA reset removes all of them.",
    params(("id" = String, Path), ("sub" = String, Path), ("pid" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
fn users_passkeys_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/users", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path)),
    request_body = NewLocalUser,
    responses((status = 201, body = LocalUserView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"), (status = 429, description = "A tenant admin over its tenant's budget of passwords hashed, the configured quota a minute (`[quotas] password_hashes_per_minute`, default 60; `reason`: `quota.password_hashes`, `Retry-After`); an account without a password hashes nothing; the platform admin is not held to it.", body = Problem, content_type = "application/problem+json")))]
fn local_users_create() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/connections/{cid}/users", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = LocalUserList), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn local_users_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/connections/{cid}/users/{email}", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path), ("email" = String, Path, description = "The account's address in any spelling: Unicode or A-label domain, any case, NFC or NFD, full-width or not.")),
    responses((status = 200, body = LocalUserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn local_users_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/connections/{cid}/users/{email}", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path), ("email" = String, Path, description = "The account's address in any spelling: Unicode or A-label domain, any case, NFC or NFD, full-width or not.")),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn local_users_delete() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/users/{email}/disable", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path), ("email" = String, Path, description = "The account's address in any spelling: Unicode or A-label domain, any case, NFC or NFD, full-width or not.")),
    responses((status = 200, body = LocalUserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn local_users_disable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/users/{email}/enable", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path), ("email" = String, Path, description = "The account's address in any spelling: Unicode or A-label domain, any case, NFC or NFD, full-width or not.")),
    responses((status = 200, body = LocalUserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn local_users_enable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/users/{email}/force-reset", tag = "local-users",
    params(("id" = String, Path), ("cid" = String, Path), ("email" = String, Path, description = "The account's address in any spelling: Unicode or A-label domain, any case, NFC or NFD, full-width or not.")),
    responses((status = 200, body = LocalUserView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn local_users_force_reset() {}

#[utoipa::path(post, path = "/admin/v1/keys/rotate", tag = "keys",
    responses((status = 200, body = JwksView, description = "the JWKS after rotation"),
        (status = 401, body = Problem, content_type = "application/problem+json")))]
fn keys_rotate() {}

#[utoipa::path(patch, path = "/admin/v1/tenants/{id}/connections/{cid}", tag = "connections", params(("id" = String, Path), ("cid" = String, Path),
        ("keep_users" = Option<bool>, Query, description = "true keeps the connection's users when the patch changes its upstream issuer (OIDC issuer, SAML entity id); by default they start afresh (users_renewed)")),
    request_body(content = ConnectionMergePatch, description = "a JSON merge patch of the connection (application/merge-patch+json or application/json); sp_entity_id and acs_url only by the platform admin"),
    responses((status = 200, body = ConnectionView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A conflicting change, or a change other than `status` of a connection a tenant file declares (`reason`: `connection.file_declared`).", body = Problem, content_type = "application/problem+json"), (status = 429, description = "A tenant admin over its tenant's budget of outbound calls a minute, the configured quota (`[quotas] outbound_per_minute`, default 30): fetching metadata or an issuer, checking DNS (`reason`: `quota.outbound`, `Retry-After`); the platform admin is not held to it.", body = Problem, content_type = "application/problem+json")))]
fn connections_patch() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/enable", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_enable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/disable", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn connections_disable() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/refresh", tag = "connections", params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 429, description = "A tenant admin over its tenant's budget of outbound calls a minute, the configured quota (`[quotas] outbound_per_minute`, default 30): fetching metadata or an issuer, checking DNS (`reason`: `quota.outbound`, `Retry-After`); the platform admin is not held to it.", body = Problem, content_type = "application/problem+json")))]
fn connections_refresh() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/connections/{cid}/sp-certificates/{step}", tag = "connections", params(("id" = String, Path), ("cid" = String, Path), ("step" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 429, description = "`rotate` by a tenant admin over its tenant's budget of SP key pairs a minute, the configured quota (`[quotas] key_generations_per_minute`, default 10; `reason`: `quota.key_generations`, `Retry-After`); the platform admin is not held to it.", body = Problem, content_type = "application/problem+json")))]
fn connections_sp_certificates() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/setup-links", tag = "setuplinks", params(("id" = String, Path)),
    request_body = NewSetupLink,
    responses((status = 201, body = SetupLinkView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn setuplinks_create() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/setup-links", tag = "setuplinks", params(("id" = String, Path)),
    responses((status = 200, body = SetupLinkList), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn setuplinks_list() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/setup-links/{link_id}", tag = "setuplinks", params(("id" = String, Path), ("link_id" = String, Path)),
    responses((status = 204, description = "revoked: the link no longer opens, and a portal session opened from it ends"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn setuplinks_revoke() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/api-keys", tag = "apikeys", params(("id" = String, Path)),
    request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey, description = "key, shown once"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_create_tenant() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/api-keys", tag = "apikeys", params(("id" = String, Path)),
    responses((status = 200, body = ApiKeyList), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_list_tenant() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/api-keys/{kid}", tag = "apikeys", params(("id" = String, Path), ("kid" = String, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_delete_tenant() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/audit", tag = "audit", params(("id" = String, Path), ("limit" = Option<u32>, Query, description = "1 to 200, default 50"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn audit_tenant() {}

#[utoipa::path(post, path = "/admin/v1/api-keys", tag = "apikeys",
    request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey, description = "key, shown once"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_create() {}

#[utoipa::path(get, path = "/admin/v1/api-keys", tag = "apikeys",
    responses((status = 200, body = ApiKeyList), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_list() {}

#[utoipa::path(delete, path = "/admin/v1/api-keys/{kid}", tag = "apikeys", params(("kid" = String, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn apikeys_delete() {}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit", params(("limit" = Option<u32>, Query, description = "1 to 200, default 50"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn audit_platform() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/domains", tag = "domains", params(("id" = String, Path)),
    request_body = NewDomain,
    responses((status = 200, body = DomainView, description = "already verified (declared by the platform admin)"), (status = 201, body = DomainView, description = "verification: the DNS TXT record to publish"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json", description = "A domain another tenant has verified, or a domain of a tenant that comes from a tenant file (`reason`: `tenant.file_owned`): change the file instead; or a tenant admin's tenant already has the configured quota of domains, verified or claimed (`[quotas] domains_per_tenant`, default 50; `reason`: `quota.domains`; the platform admin is not held to it).")))]
fn domains_claim() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/domains", tag = "domains", params(("id" = String, Path)),
    responses((status = 200, body = DomainList), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn domains_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/domains/{domain}", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    responses((status = 200, body = DomainView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn domains_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/domains/{domain}", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json", description = "The tenant comes from a tenant file, which declares its domains (`reason`: `tenant.file_owned`): change the file instead.")))]
fn domains_delete() {}

#[utoipa::path(patch, path = "/admin/v1/tenants/{id}/domains/{domain}", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    request_body = DomainConnections,
    responses((status = 200, body = DomainView), (status = 400, body = Problem, content_type = "application/problem+json", description = "A connection id that is not one of the tenant's (`field`: `connections[i]`)."), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json", description = "No such tenant, or the tenant has no such domain."), (status = 409, body = Problem, content_type = "application/problem+json", description = "The domain is claimed but not verified yet; or the tenant's domains would be assigned to more than 100 connections in all, a domain assigned to two counting two (`reason`: `domain.too_many_assignments`; the map is in the tenant's record every sign-in reads); or the tenant comes from a tenant file, which declares its assignments in `domain_connections` (`reason`: `tenant.file_owned`).")))]
fn domains_assign() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/domains/{domain}/verify", tag = "domains", params(("id" = String, Path), ("domain" = String, Path)),
    request_body(content = Option<VerifyDomain>, description = "optional"),
    responses((status = 200, body = DomainView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json", description = "A domain another tenant verified first, or a domain the tenant file of the tenant does not declare (`reason`: `tenant.file_owned`)."), (status = 429, description = "A tenant admin over its tenant's budget of outbound calls a minute, the configured quota (`[quotas] outbound_per_minute`, default 30): fetching metadata or an issuer, checking DNS (`reason`: `quota.outbound`, `Retry-After`); the platform admin is not held to it.", body = Problem, content_type = "application/problem+json")))]
fn domains_verify() {}

#[utoipa::path(put, path = "/admin/v1/tenants/{id}/mfa", tag = "tenants", params(("id" = String, Path)),
    request_body = MfaSetting,
    responses((status = 200, body = MfaSetting), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
fn tenants_mfa() {}

#[utoipa::path(post, path = "/admin/v1/tenants/{id}/exchange-rules", tag = "exchange-rules", params(("id" = String, Path)),
    request_body = NewExchangeRule,
    responses((status = 201, body = ExchangeRuleView), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken, or the tenant already has the configured quota of rules (`[quotas] exchange_rules_per_tenant`, default 100; `reason`: `quota.exchange_rules`; the platform admin too).", body = Problem, content_type = "application/problem+json")))]
fn exchange_rules_create() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/exchange-rules", tag = "exchange-rules", params(("id" = String, Path)),
    responses((status = 200, body = ExchangeRuleList), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn exchange_rules_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/exchange-rules/{rid}", tag = "exchange-rules",
    params(("id" = String, Path), ("rid" = String, Path)),
    responses((status = 200, body = ExchangeRuleView), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn exchange_rules_get() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/exchange-rules/{rid}", tag = "exchange-rules",
    params(("id" = String, Path), ("rid" = String, Path)),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
fn exchange_rules_delete() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/hooks", tag = "hooks", params(("id" = String, Path)),
    responses((status = 200, body = HookList), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn hooks_list() {}

#[utoipa::path(get, path = "/admin/v1/tenants/{id}/hooks/{kind}", tag = "hooks", params(("id" = String, Path), ("kind" = String, Path, description = "pre_token_generation, user_migration, post_confirmation or custom_challenge")),
    responses((status = 200, body = HookView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn hooks_get() {}

#[utoipa::path(put, path = "/admin/v1/tenants/{id}/hooks/{kind}", tag = "hooks", params(("id" = String, Path), ("kind" = String, Path, description = "pre_token_generation, user_migration, post_confirmation or custom_challenge")),
    request_body = HookSetting,
    responses((status = 200, body = HookView, description = "replaced"), (status = 201, body = HookView, description = "created; with the generated secret if none was given"), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn hooks_put() {}

#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/hooks/{kind}", tag = "hooks", params(("id" = String, Path), ("kind" = String, Path, description = "pre_token_generation, user_migration, post_confirmation or custom_challenge")),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
fn hooks_delete() {}
