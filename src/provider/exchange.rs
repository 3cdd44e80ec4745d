//! RFC 8693 token exchange (the identity-pool idea): an app trades a
//! user's Portcullis access token for a short-lived access token scoped to
//! one resource server, as the tenant's *exchange rules* allow.
//!
//! A rule (`POST /admin/v1/tenants/{id}/exchange-rules`) says: users whose
//! claim `when.claim` equals `when.equals` (every user of the tenant when
//! `when` is absent) may get tokens for `resource` with `scopes`, and the
//! token carries the extra `claims`. Scopes and claim values may hold the
//! policy variables `${sub}` and `${tenant}`, expanded for the user, so a
//! token can name only the user's own data (`files:${sub}`,
//! `{"path": "/users/${sub}"}`).
//!
//! The decision, in order (every refusal has its reason code):
//! 1. the app may use the grant (`unauthorized_client`, checked by
//!    [`Provider::token`]), the parameters are the supported ones
//!    (`invalid_request`);
//! 2. the subject token passes every check an access token passes on use
//!    ([`Provider::check_access_token`]: signature, `exp`, revocation, the
//!    user, tenant, connection and app still active), is about a user, and
//!    was issued to the app asking (`invalid_request`, RFC 8693 §2.2.2);
//! 3. the target resource server exists and the app may target it; the
//!    rules of the user's tenant for that resource whose condition holds
//!    give the scopes (none: `invalid_target`); a scope the resource server
//!    defines is granted only if the app is allowed it there (tenant rules
//!    narrow what the platform allows the app, never widen it);
//! 4. a `scope` parameter narrows further (nothing left: `invalid_scope`).
//!
//! A rule is bound to the incarnation of the tenant it was written for
//! ([`ExchangeRule::belongs_to`]): a rule left in the store by a deleted
//! tenant (its purge failed) is not read, listed or applied for a tenant
//! created again under the same id, whatever the purge did.
//!
//! The token lives [`EXCHANGED_TOKEN_TTL_SECS`] at most and never beyond the
//! subject token's `exp`, so exchanging an exchanged token cannot prolong
//! access; a subject token at or past its `exp` (still accepted on use
//! within the verification leeway) is not exchanged
//! (`exchange.subject_expired`), so no token is issued already expired. No `actor_token`: the exchange is impersonation (RFC 8693 §1.1)
//! by the app the user signed in to, so no `act` claim is issued.

use super::clients::Client;
use super::grants::{AccessClaims, TokenRequest, TokenResponse};
use super::resources::ResourceServer;
use super::{OAuthError, OAuthErrorCode, Provider};
use crate::directory::User;
use crate::ids::TenantId;
use crate::store::{Key, SharedStore, StoreError, StoreJson};
use crate::tenant::Tenant;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The token type of an access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The longest lifetime of an exchanged token, seconds.
pub const EXCHANGED_TOKEN_TTL_SECS: i64 = 300;

/// The most rules a tenant may have by default (`[quotas]
/// exchange_rules_per_tenant`, which the check reads): every exchange of
/// the tenant reads each of its rules.
pub const MAX_RULES: usize = 100;

/// The claims a rule may test in `when.claim`.
pub const RULE_CLAIMS: [&str; 8] = [
    "groups",
    "email",
    "email_domain",
    "connection",
    "sub",
    "name",
    "given_name",
    "family_name",
];

// Claims a rule can never set: the pre-token hook's protected claims (the
// token's identity, audience, lifetime and delegation, the connection, and
// the email a tenant's own domains vouch for), one list for both.
use crate::hooks::pre_token::PROTECTED as PROTECTED_CLAIMS;

/// How many exchanges deep a token may be (an exchanged token exchanged
/// again...): each one's link to its subject tokens is checked on use.
pub const MAX_EXCHANGE_DEPTH: usize = 4;

/// The condition of a rule: the user's claim `claim` equals `equals` (for
/// `groups`: the user is a member of the group `equals`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct When {
    /// One of [`RULE_CLAIMS`].
    pub claim: String,
    /// The exact value (case-sensitive).
    pub equals: String,
}

/// One exchange rule of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRule {
    /// The rule's id within its tenant.
    pub id: String,
    /// The condition; `None`: every user of the tenant.
    #[serde(default)]
    pub when: Option<When>,
    /// The resource server's identifier: the exchanged token's `aud`.
    pub resource: String,
    /// The scopes granted (may hold `${sub}`, `${tenant}`).
    pub scopes: Vec<String>,
    /// Extra claims of the exchanged token (values may hold `${sub}`, `${tenant}`).
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The incarnation of the tenant it was written for
    /// ([`ExchangeRules::create`] sets it); `None` in rules written before
    /// rules carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_incarnation: Option<String>,
}

impl ExchangeRule {
    /// True if the rule is `tenant`'s own rather than one left by a deleted
    /// tenant of the same id: written for its incarnation or, written before
    /// rules carried one, not older than the tenant (a predecessor's rule
    /// was written before the predecessor was deleted, so before this
    /// tenant was created).
    pub fn belongs_to(&self, tenant: &Tenant) -> bool {
        match &self.tenant_incarnation {
            Some(incarnation) => *incarnation == tenant.incarnation,
            None => self.created_at >= tenant.created_at,
        }
    }

    /// True if the rule's condition holds for `user`.
    pub fn applies_to(&self, user: &User) -> bool {
        let Some(when) = &self.when else {
            return true;
        };
        let eq = |v: &Option<String>| v.as_deref() == Some(when.equals.as_str());
        match when.claim.as_str() {
            "groups" => user.groups.iter().any(|g| g == &when.equals),
            // Only an address the IdP verified (and the tenant vouches
            // for: `tenant::vouch_email`) names its person, or its domain.
            "email" => user.email_verified == Some(true) && eq(&user.email),
            "email_domain" => {
                user.email_verified == Some(true)
                    && user
                        .email
                        .as_deref()
                        .and_then(|e| e.rsplit_once('@'))
                        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&when.equals))
            }
            "connection" => user.connection.as_str() == when.equals,
            "sub" => user.sub == when.equals,
            "name" => eq(&user.name),
            "given_name" => eq(&user.given_name),
            "family_name" => eq(&user.family_name),
            // Unknown claims were refused at creation; fail closed anyway.
            _ => false,
        }
    }
}

/// Expands the policy variables `${sub}` and `${tenant}` in `template`.
pub fn expand(template: &str, sub: &str, tenant: &str) -> String {
    template.replace("${sub}", sub).replace("${tenant}", tenant)
}

/// True if `template` uses a policy variable.
pub fn is_template(s: &str) -> bool {
    s.contains("${")
}

/// Checks the variables of a template: only `${sub}` and `${tenant}`, each
/// standing alone between separators. Next to a letter, digit, `-` or `_`
/// (or another variable) its expansion could be another user's or
/// organization's: `files:${tenant}-eu` is `files:acme-eu` for `acme`,
/// the scope of a tenant `acme-eu`.
fn check_variables(s: &str) -> Result<(), String> {
    let rest = expand(s, "x", "x");
    if rest.contains("${") {
        return Err(format!(
            "{s:?} uses an unknown policy variable (only ${{sub}} and ${{tenant}} exist)"
        ));
    }
    let joins = |c: Option<char>, variable_side: char| {
        c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == variable_side)
    };
    for var in ["${sub}", "${tenant}"] {
        for (at, _) in s.match_indices(var) {
            let before = s[..at].chars().next_back();
            let after = s[at + var.len()..].chars().next();
            if joins(before, '}') || joins(after, '$') {
                return Err(format!(
                    "{s:?}: {var} must stand between separators such as ':' or '/' (not next to a letter, digit, '-', '_' or another variable), or it could name another user or organization"
                ));
            }
        }
    }
    Ok(())
}

/// Checks a rule id: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`.
pub fn check_rule_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 64 characters of a-z, 0-9, '-', '_', '.'".into())
    }
}

/// Checks a new rule against the resource server it names; returns
/// (field path, message) for the first problem.
pub fn check_rule(rule: &ExchangeRule, rs: Option<&ResourceServer>) -> Result<(), (String, String)> {
    check_rule_id(&rule.id).map_err(|m| ("id".to_owned(), m))?;
    if let Some(w) = &rule.when {
        if !RULE_CLAIMS.contains(&w.claim.as_str()) {
            return Err((
                "when.claim".into(),
                format!("{:?} is not one of {}", w.claim, RULE_CLAIMS.join(", ")),
            ));
        }
        if w.equals.is_empty() || w.equals.len() > 256 {
            return Err(("when.equals".into(), "must be 1 to 256 characters".into()));
        }
    }
    let Some(rs) = rs else {
        return Err((
            "resource".into(),
            format!("{:?} is not a registered resource server", rule.resource),
        ));
    };
    if rule.scopes.is_empty() || rule.scopes.len() > 32 {
        return Err(("scopes".into(), "must list 1 to 32 scopes".into()));
    }
    for (i, s) in rule.scopes.iter().enumerate() {
        let field = format!("scopes[{i}]");
        if is_template(s) {
            check_variables(s).map_err(|m| (field.clone(), m))?;
            // A user's sub and tenant are scope-token characters, so the
            // expansion is one if the rest is.
            let sample = expand(s, "sub", "tenant");
            if sample.is_empty() || sample.len() > 255 || !scope_token(&sample) {
                return Err((field, format!("{s:?} is not a scope token")));
            }
        } else if rs.resolve(s).is_none() {
            return Err((
                field,
                format!("{s:?} is not a scope of the resource server {:?}", rs.identifier),
            ));
        }
        if rule.scopes.iter().take(i).any(|x| x == s) {
            return Err((field, format!("{s:?} appears twice")));
        }
    }
    if rule.claims.len() > 16 {
        return Err(("claims".into(), "at most 16 claims".into()));
    }
    for (name, value) in &rule.claims {
        let field = format!("claims.{name}");
        if name.is_empty() || name.len() > 64 || PROTECTED_CLAIMS.contains(&name.as_str()) {
            return Err((
                field,
                "is a protected claim (or not 1 to 64 characters) and cannot be set by a rule".into(),
            ));
        }
        if value.len() > 1024 {
            return Err((field, "must be at most 1024 characters".into()));
        }
        check_variables(value).map_err(|m| (field, m))?;
    }
    Ok(())
}

fn scope_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The index of a tenant's rule ids.
pub(crate) fn index_key(tenant: &TenantId) -> Key {
    Key::tenant(tenant.as_str(), "exchange", "index")
}

/// The record of one rule.
pub(crate) fn rule_key(tenant: &TenantId, id: &str) -> Key {
    Key::tenant(tenant.as_str(), "exchange", format!("rule:{id}"))
}

/// The exchange rules of the tenants, in the store (persistent). Rules are
/// read for the tenant as it is now (its record, read in the request):
/// another incarnation's are skipped, logged `exchange.rule_stale`.
#[derive(Clone)]
pub struct ExchangeRules {
    store: SharedStore,
}

impl ExchangeRules {
    /// The rules over `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Creates a rule of `tenant`, stamped with its incarnation; `false` if
    /// the tenant has a rule of that id. A rule of that id left by a deleted
    /// tenant is replaced (compared against the bytes read, so of two
    /// concurrent creations one wins).
    pub async fn create(&self, tenant: &Tenant, rule: &ExchangeRule) -> Result<bool, StoreError> {
        let rule = ExchangeRule {
            tenant_incarnation: Some(tenant.incarnation.clone()),
            ..rule.clone()
        };
        let key = rule_key(&tenant.id, &rule.id);
        let bytes = serde_json::to_vec(&rule).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !self.store.put_if_absent(&key, &bytes, None).await? {
            let Some(raw) = self.store.get(&key).await? else {
                // Deleted meanwhile: another writer is at work on this id.
                return Ok(false);
            };
            let held: ExchangeRule = serde_json::from_slice(&raw)
                .map_err(|e| StoreError::Corrupt(format!("exchange rule {}: {e}", rule.id)))?;
            if held.belongs_to(tenant) || !self.store.compare_and_put(&key, &raw, &bytes, None).await? {
                return Ok(false);
            }
            tracing::info!(reason = "exchange.rule_stale_replaced", tenant = %tenant.id, rule = %rule.id, "an exchange rule of an earlier tenant with this id was replaced");
        }
        self.store.set_add(&index_key(&tenant.id), &rule.id, None).await?;
        Ok(true)
    }

    /// Reads one rule of `tenant` (`None` for one of another incarnation).
    pub async fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<ExchangeRule>, StoreError> {
        if check_rule_id(id).is_err() {
            return Ok(None);
        }
        let rule: Option<ExchangeRule> = self.store.get_json(&rule_key(&tenant.id, id)).await?;
        Ok(rule.filter(|r| {
            let own = r.belongs_to(tenant);
            if !own {
                tracing::warn!(reason = "exchange.rule_stale", tenant = %tenant.id, rule = %r.id, "an exchange rule of an earlier tenant with this id is ignored");
            }
            own
        }))
    }

    /// The number of the tenant's rules (for the limit).
    pub async fn count(&self, tenant: &Tenant) -> Result<usize, StoreError> {
        Ok(self.all(tenant).await?.len())
    }

    /// Every rule of the tenant, ordered by id.
    pub async fn all(&self, tenant: &Tenant) -> Result<Vec<ExchangeRule>, StoreError> {
        let mut ids = self.store.set_members(&index_key(&tenant.id)).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(tenant, &id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Deletes a rule; `false` if it did not exist.
    pub async fn delete(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        if check_rule_id(id).is_err() {
            return Ok(false);
        }
        let existed = self.store.delete(&rule_key(tenant, id)).await?;
        self.store.set_remove(&index_key(tenant), id).await?;
        Ok(existed)
    }

    /// Deletes every rule of a tenant (the tenant is being deleted).
    pub async fn purge(&self, tenant: &TenantId) -> Result<(), StoreError> {
        for id in self.store.set_members(&index_key(tenant)).await? {
            self.store.delete(&rule_key(tenant, &id)).await?;
        }
        self.store.delete(&index_key(tenant)).await?;
        Ok(())
    }
}

/// The claims of an exchanged access token: an RFC 9068 access token plus
/// the rules' extra claims.
#[derive(Debug, Serialize)]
struct ExchangedClaims {
    #[serde(flatten)]
    base: AccessClaims,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn refuse(reason: &'static str, description: &str) -> OAuthError {
    tracing::info!(reason, "token exchange refused");
    OAuthError::invalid_request(reason, description)
}

impl Provider {
    /// The token-exchange grant (RFC 8693 §2.1); see the module comment.
    pub(crate) async fn exchange_grant(
        &self,
        client: &Client,
        req: &TokenRequest,
    ) -> Result<TokenResponse, OAuthError> {
        if req.actor_token.is_some() || req.actor_token_type.is_some() {
            return Err(refuse(
                "exchange.actor_not_supported",
                "actor_token is not supported: the exchange is on behalf of the subject.",
            ));
        }
        let subject_token = req
            .subject_token
            .as_deref()
            .ok_or_else(|| refuse("exchange.missing_subject_token", "subject_token is required."))?;
        match req.subject_token_type.as_deref() {
            Some(ACCESS_TOKEN_TYPE) => {}
            Some(_) => {
                return Err(refuse(
                    "exchange.unsupported_subject_token_type",
                    "subject_token_type must be urn:ietf:params:oauth:token-type:access_token.",
                ))
            }
            None => {
                return Err(refuse(
                    "exchange.missing_subject_token_type",
                    "subject_token_type is required.",
                ))
            }
        }
        if req
            .requested_token_type
            .as_deref()
            .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
        {
            return Err(refuse(
                "exchange.unsupported_requested_token_type",
                "Only access tokens can be requested (urn:ietf:params:oauth:token-type:access_token).",
            ));
        }
        let resource = match (req.resource.as_deref(), req.audience.as_deref()) {
            (Some(r), Some(a)) if r != a => {
                tracing::info!(reason = "exchange.audience_mismatch", client_id = %client.client_id);
                return Err(OAuthError::invalid_target(
                    "exchange.audience_mismatch",
                    "audience and resource name different resource servers.",
                ));
            }
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => {
                return Err(refuse(
                    "exchange.missing_resource",
                    "resource is required: the resource server the token is for.",
                ))
            }
        };
        // The subject token passes every check of an access token on use.
        let subject = match self.check_access_token(subject_token).await {
            Ok(c) => c,
            Err(e) if e.code == OAuthErrorCode::InvalidToken => {
                tracing::info!(reason = e.reason, client_id = %client.client_id, "token exchange: subject token refused");
                return Err(OAuthError::invalid_request(
                    e.reason,
                    format!("The subject_token is not valid: {}", e.description),
                ));
            }
            Err(e) => return Err(e),
        };
        // The subject token is accepted on use up to `LEEWAY_SECS` past its
        // `exp` (clock skew), but the exchanged token never outlives it: one
        // issued from a subject at or past its `exp` would be expired when
        // issued. Refused as an invalid subject token (RFC 8693 §2.2.2),
        // so every exchanged token has `exp` > `iat`.
        let now = self.clock.unix();
        if subject.exp <= now {
            return Err(refuse(
                "exchange.subject_expired",
                "The subject_token has expired: it can no longer be exchanged.",
            ));
        }
        let Some(tenant) = subject.tenant.as_deref().and_then(|t| TenantId::parse(t).ok()) else {
            return Err(refuse(
                "exchange.subject_not_user",
                "The subject_token is not about a user.",
            ));
        };
        crate::telemetry::tag_span(tenant.as_str(), None);
        if subject.client_id != client.client_id {
            return Err(refuse(
                "exchange.subject_other_client",
                "The subject_token was issued to another application.",
            ));
        }
        // The tenant's record: its settings, and the incarnation its rules
        // must carry. Gone, it was refused by the subject token's checks.
        let record = self.exchange_tenant(&tenant).await?;
        if !client.allows_tenant(&tenant)
            || !record
                .as_ref()
                .is_none_or(|t| t.settings.allows_client(&client.client_id))
        {
            return Err(refuse(
                "exchange.tenant_not_allowed",
                "This application may not serve the user's organization.",
            ));
        }
        let user = self.directory.get(&tenant, &subject.sub).await?.ok_or_else(|| {
            refuse(
                "token.user_gone",
                "The subject_token is not valid: the user no longer exists.",
            )
        })?;
        // An `email`/`email_domain` rule matches only an address the tenant
        // vouches for now (a domain removed since vouches for nobody).
        let user = match &record {
            Some(t) => crate::directory::vouched_now(t, user),
            None => User {
                email_verified: Some(false),
                ..user
            },
        };
        let Some(rs) = self.resources.get(resource).await? else {
            tracing::info!(reason = "exchange.unknown_resource", tenant = %tenant, client_id = %client.client_id);
            return Err(OAuthError::invalid_target(
                "exchange.unknown_resource",
                "The resource is not a registered resource server.",
            ));
        };
        if !rs.targetable_by(client) {
            tracing::info!(reason = "exchange.resource_not_allowed", tenant = %tenant, client_id = %client.client_id);
            return Err(OAuthError::invalid_target(
                "exchange.resource_not_allowed",
                "This application may not obtain tokens for that resource.",
            ));
        }
        let rules = match &record {
            Some(t) => ExchangeRules::new(self.store.clone()).all(t).await?,
            None => Vec::new(),
        };
        let matching: Vec<&ExchangeRule> = rules
            .iter()
            .filter(|r| r.resource == rs.identifier && r.applies_to(&user))
            .collect();
        if matching.is_empty() {
            tracing::info!(reason = "exchange.no_rule", tenant = %tenant, client_id = %client.client_id);
            self.audit
                .security(
                    crate::audit::AuditEvent::security(
                        &crate::audit::Actor::Client(client.client_id.clone()),
                        "token.exchange_refused",
                        crate::audit::Target::new("resource_server", &rs.identifier),
                        crate::audit::Outcome::Failure,
                        "exchange.no_rule",
                    )
                    .tenant(&tenant)
                    .subject(&user.sub),
                )
                .await;
            return Err(OAuthError::invalid_target(
                "exchange.no_rule",
                "No exchange rule of the organization gives this user access to that resource.",
            ));
        }
        let mut scope: Vec<String> = Vec::new();
        let mut extra = Map::new();
        for rule in &matching {
            for s in &rule.scopes {
                let granted = if is_template(s) {
                    // A template makes a scope of its own (`files:${sub}`),
                    // never one the platform governs: an expansion that names
                    // a scope of this server is granted only as that scope
                    // would be, and an OIDC scope never.
                    let g = expand(s, &user.sub, tenant.as_str());
                    match rs.resolve(&g) {
                        Some(name) => rs.allows(&client.allowed_scopes, name).then_some(g),
                        None if super::resources::is_oidc_scope(&g) => None,
                        None => Some(g),
                    }
                } else {
                    // The platform allows the app this scope there, or not.
                    rs.resolve(s)
                        .filter(|name| rs.allows(&client.allowed_scopes, name))
                        .map(|_| s.clone())
                };
                if let Some(g) = granted {
                    if !scope.contains(&g) {
                        scope.push(g);
                    }
                }
            }
            for (k, v) in &rule.claims {
                extra
                    .entry(k.clone())
                    .or_insert_with(|| Value::String(expand(v, &user.sub, tenant.as_str())));
            }
        }
        if let Some(wanted) = &req.scope {
            let wanted: Vec<&str> = wanted.split_whitespace().collect();
            scope.retain(|s| {
                wanted
                    .iter()
                    .any(|w| *w == s || rs.resolve(w).is_some_and(|n| rs.resolve(s) == Some(n)))
            });
        }
        if scope.is_empty() {
            tracing::info!(reason = "exchange.no_scope", tenant = %tenant, client_id = %client.client_id);
            return Err(OAuthError::invalid_scope(
                "exchange.no_scope",
                "None of the requested scopes can be granted for this resource.",
            ));
        }
        // The link to the subject token (and to what it was exchanged for),
        // so revoking any of them refuses this token on use.
        let mut subject_jti = Vec::with_capacity(subject.subject_jti.len() + 1);
        subject_jti.push(subject.jti.clone());
        subject_jti.extend(subject.subject_jti.iter().cloned());
        if subject_jti.len() > MAX_EXCHANGE_DEPTH {
            return Err(refuse(
                "exchange.too_deep",
                "The subject_token was itself exchanged too many times.",
            ));
        }
        // `now` as read when the subject was checked: `exp` > `now` holds.
        let exp = (now + EXCHANGED_TOKEN_TTL_SECS).min(subject.exp);
        let claims = ExchangedClaims {
            base: AccessClaims {
                iss: self.iss(),
                sub: subject.sub.clone(),
                aud: rs.identifier.clone(),
                exp,
                iat: now,
                jti: crate::tokens::random_token(16),
                client_id: client.client_id.clone(),
                scope: scope.join(" "),
                tenant: Some(tenant.to_string()),
                auth_time: subject.auth_time,
                sid: subject.sid.clone(),
                subject_jti,
                // Dies with the subject token's refresh family too.
                fam: subject.fam.clone(),
            },
            extra,
        };
        let access_token = self.keys.signer().await?.sign("at+jwt", &claims)?;
        tracing::info!(
            reason = "exchange.issued",
            tenant = %tenant,
            client_id = %client.client_id,
            aud = %rs.identifier,
            rules = matching.len(),
            "token exchanged"
        );
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: u64::try_from(exp - now).unwrap_or(0),
            id_token: None,
            refresh_token: None,
            scope: claims.base.scope,
            issued_token_type: Some(ACCESS_TOKEN_TYPE),
        })
    }

    /// The record of the subject's tenant, `None` if it is gone.
    async fn exchange_tenant(&self, tenant: &TenantId) -> Result<Option<std::sync::Arc<Tenant>>, OAuthError> {
        self.directory.tenants().get(tenant).await.map_err(|e| match e {
            crate::tenant::RegistryError::Store(e) => OAuthError::from(e),
            other => OAuthError::from(StoreError::Unavailable(other.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnectionId;
    use crate::provider::resources::ResourceScope;

    fn user(groups: &[&str], email: Option<&str>, verified: bool) -> User {
        User {
            sub: "u1".into(),
            tenant: TenantId::parse("acme").unwrap(),
            connection: ConnectionId::parse("okta").unwrap(),
            upstream_subject: "x".into(),
            email: email.map(str::to_owned),
            email_verified: Some(verified),
            name: None,
            given_name: None,
            family_name: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            created_at: DateTime::<Utc>::MIN_UTC,
            updated_at: DateTime::<Utc>::MIN_UTC,
            tenant_incarnation: String::new(),
            connection_incarnation: String::new(),
            not_before: None,
        }
    }

    fn rule(when: Option<(&str, &str)>, scopes: &[&str]) -> ExchangeRule {
        ExchangeRule {
            id: "r1".into(),
            when: when.map(|(c, e)| When {
                claim: c.into(),
                equals: e.into(),
            }),
            resource: "https://files.test".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            claims: Default::default(),
            created_at: DateTime::<Utc>::MIN_UTC,
            tenant_incarnation: None,
        }
    }

    fn files() -> ResourceServer {
        ResourceServer {
            identifier: "https://files.test".into(),
            name: "files".into(),
            scopes: vec![ResourceScope {
                name: "read".into(),
                description: String::new(),
            }],
            created_at: DateTime::<Utc>::MIN_UTC,
            routes: vec![],
        }
    }

    #[test]
    fn conditions_match_exactly_and_email_domains_only_when_verified() {
        let u = user(&["eng"], Some("jane@acme.test"), true);
        assert!(rule(None, &["read"]).applies_to(&u));
        assert!(rule(Some(("groups", "eng")), &["read"]).applies_to(&u));
        assert!(!rule(Some(("groups", "Eng")), &["read"]).applies_to(&u));
        assert!(rule(Some(("email_domain", "acme.test")), &["read"]).applies_to(&u));
        assert!(rule(Some(("email", "jane@acme.test")), &["read"]).applies_to(&u));
        assert!(!rule(Some(("email", "joe@acme.test")), &["read"]).applies_to(&u));
        let unverified = user(&[], Some("jane@acme.test"), false);
        assert!(!rule(Some(("email_domain", "acme.test")), &["read"]).applies_to(&unverified));
        assert!(!rule(Some(("email", "jane@acme.test")), &["read"]).applies_to(&unverified));
        assert!(!rule(Some(("nope", "x")), &["read"]).applies_to(&u));
    }

    #[test]
    fn a_rule_belongs_to_the_incarnation_it_was_written_for_or_if_unstamped_to_a_tenant_not_younger() {
        let created = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().to_utc();
        let tenant = Tenant {
            id: TenantId::parse("acme").unwrap(),
            name: "Acme".into(),
            domains: vec![],
            domain_connections: Default::default(),
            created_at: created,
            incarnation: "now".into(),
            settings: Default::default(),
        };
        let stamped = |inc: &str| ExchangeRule {
            tenant_incarnation: Some(inc.into()),
            created_at: created + chrono::Duration::hours(1),
            ..rule(None, &["read"])
        };
        assert!(stamped("now").belongs_to(&tenant));
        assert!(!stamped("before").belongs_to(&tenant));
        let unstamped = |at: DateTime<Utc>| ExchangeRule {
            created_at: at,
            ..rule(None, &["read"])
        };
        assert!(unstamped(created).belongs_to(&tenant));
        assert!(unstamped(created + chrono::Duration::seconds(1)).belongs_to(&tenant));
        assert!(!unstamped(created - chrono::Duration::seconds(1)).belongs_to(&tenant));
    }

    #[test]
    fn rules_are_checked_against_the_resource_server() {
        let rs = files();
        assert_eq!(check_rule(&rule(None, &["read", "files:${sub}"]), Some(&rs)), Ok(()));
        let field = |r: &ExchangeRule, rs: Option<&ResourceServer>| check_rule(r, rs).unwrap_err().0;
        assert_eq!(field(&rule(None, &["write"]), Some(&rs)), "scopes[0]");
        assert_eq!(field(&rule(None, &["read", "x:${user}"]), Some(&rs)), "scopes[1]");
        assert_eq!(field(&rule(None, &["read"]), None), "resource");
        assert_eq!(field(&rule(None, &[]), Some(&rs)), "scopes");
        assert_eq!(field(&rule(Some(("role", "x")), &["read"]), Some(&rs)), "when.claim");
        let mut r = rule(None, &["read"]);
        r.claims.insert("sub".into(), "x".into());
        assert_eq!(field(&r, Some(&rs)), "claims.sub");
        assert_eq!(expand("/users/${sub}/${tenant}", "u1", "acme"), "/users/u1/acme");
    }
}
