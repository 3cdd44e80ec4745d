//! Connection status enforcement, test sign-ins and failed sign-in records
//! (the setup portal's part of the broker).
//!
//! A connection that is not `active` serves nobody: `/authorize` does not
//! offer it and an IdP answer for it is refused — except a *test sign-in*
//! started from the portal, which runs every check of a real sign-in but
//! provisions no user, opens no SSO session and issues no code; its result
//! is kept for the portal and the browser goes back to the portal.
//!
//! Refused sign-ins are recorded per tenant in a small ring of keys (the
//! reason code and the time, never the answer itself), for the portal's
//! "recent failed sign-ins" page.

use super::{page, pending_key, unavailable, Broker, Outcome, PendingLogin};
use crate::broker::authorize::AuthRequest;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, StoreError, StoreJson};
use crate::upstream::{BeginRequest, CallbackParams, ConnectionStatus, Connector, Identity, UpstreamError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How long a test sign-in's result is kept for the portal.
pub const TEST_RESULT_TTL: Duration = Duration::from_secs(3600);
/// How many failed sign-ins are kept per tenant.
pub const FAILED_SIGN_INS_KEPT: i64 = 50;
/// How long a failed sign-in record is kept.
pub const FAILED_SIGN_IN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A pending login started from the portal to test a connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestSignIn {
    /// The test's id (the key of its result).
    pub id: String,
    /// Where the browser goes when the test is over (the portal's result page).
    pub return_to: String,
}

/// What a test sign-in found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestResult {
    /// The connection tested.
    pub connection: ConnectionId,
    /// The connection's revision when tested: a result speaks only for the
    /// configuration it tested.
    pub revision: u64,
    /// When it finished (Unix seconds).
    pub at: i64,
    /// Whether every check passed.
    pub ok: bool,
    /// The reason code of the failed check (`None` on success).
    pub reason: Option<String>,
    /// The failed check's user-safe message.
    pub message: Option<String>,
    /// Every attribute or claim the IdP sent (on success).
    pub attributes: BTreeMap<String, Vec<String>>,
    /// The claims Portcullis would issue (on success; `sub` is assigned at
    /// the first real sign-in).
    pub claims: BTreeMap<String, serde_json::Value>,
    /// What a real sign-in would pass but not take at the IdP's word, as
    /// reason codes (on success): `email_verified` withheld
    /// (`login.email_not_vouched`, `login.email_not_plain`,
    /// `login.email_other_connection`), so the admin sees why it is false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One refused sign-in of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedSignIn {
    /// When (Unix seconds).
    pub at: i64,
    /// The connection, when known.
    pub connection: Option<ConnectionId>,
    /// The reason code.
    pub reason: String,
}

fn result_key(t: &TenantId, id: &str) -> Key {
    Key::tenant(t.as_str(), "portal", format!("test:{id}"))
}

fn failed_counter_key(t: &TenantId) -> Key {
    Key::tenant(t.as_str(), "failed", "counter")
}

fn failed_slot_key(t: &TenantId, slot: i64) -> Key {
    Key::tenant(t.as_str(), "failed", format!("slot:{slot}"))
}

/// The claims an ID token for `identity` would carry (besides the
/// protocol claims), as the portal shows them.
fn claims_of(identity: &Identity) -> BTreeMap<String, serde_json::Value> {
    let mut c = BTreeMap::new();
    c.insert(
        "sub".to_owned(),
        serde_json::json!("(a stable random id, assigned at the first sign-in)"),
    );
    if let Some(e) = &identity.email {
        c.insert("email".to_owned(), serde_json::json!(e));
        c.insert(
            "email_verified".to_owned(),
            serde_json::json!(identity.email_verified.unwrap_or(false)),
        );
    }
    for (k, v) in [
        ("name", &identity.name),
        ("given_name", &identity.given_name),
        ("family_name", &identity.family_name),
    ] {
        if let Some(v) = v {
            c.insert(k.to_owned(), serde_json::json!(v));
        }
    }
    if !identity.groups.is_empty() {
        c.insert("groups".to_owned(), serde_json::json!(identity.groups));
    }
    if !identity.amr.is_empty() {
        c.insert("amr".to_owned(), serde_json::json!(identity.amr));
    }
    c
}

impl Broker {
    /// Whether `connection` of `tenant` serves users (`Ok(false)` when it is
    /// pending a test, disabled or gone).
    pub async fn is_active(&self, tenant: &TenantId, connection: &ConnectionId) -> Result<bool, StoreError> {
        match self.tenants.connection(tenant, connection).await {
            Ok(c) => Ok(c.is_some_and(|c| c.status == ConnectionStatus::Active)),
            Err(crate::tenant::RegistryError::Store(e)) => Err(e),
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        }
    }

    /// Starts a test sign-in of `connection` from the portal: the browser is
    /// sent to the IdP like a real sign-in; the answer's result is kept under
    /// the returned test id and the browser comes back to `return_to`.
    pub async fn begin_test(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        return_to: &Url,
    ) -> Result<(String, Outcome), Outcome> {
        let connector = self
            .connectors
            .get(&self.tenants, &self.upstream, tenant, connection)
            .await
            .map_err(|e| self.upstream_failed(None, tenant, connection, e))?;
        let login_id = crate::tokens::random_token(24);
        let begin = BeginRequest {
            login_id: &login_id,
            force_authn: false,
            login_hint: None,
            max_age: None,
            require_mfa: false,
        };
        let started = connector
            .begin(begin)
            .await
            .map_err(|e| self.upstream_failed(None, tenant, connection, e))?;
        let incarnation = match self.tenants.incarnation(tenant, connection).await {
            Ok(crate::tenant::Liveness::Live(inc)) => inc,
            Ok(_) => {
                return Err(page(
                    404,
                    "Test failed",
                    "This connection does not exist (any more).",
                    "authorize.connection_gone",
                ))
            }
            Err(e) => return Err(unavailable(e)),
        };
        let test_id = crate::tokens::random_token(24);
        let pending = PendingLogin {
            tenant: tenant.clone(),
            connection: connection.clone(),
            request: AuthRequest::minimal("portcullis-portal", return_to.as_str(), None, &["openid"]),
            connector_state: started.state,
            // The result is shown only to a portal session of this tenant,
            // and a test opens no session: no browser binding is needed.
            browser_binding: None,
            started_at: self.provider.clock.unix(),
            incarnation: Some(incarnation),
            test: Some(TestSignIn {
                id: test_id.clone(),
                return_to: return_to.to_string(),
            }),
        };
        self.store
            .put_json(&pending_key(tenant, &login_id), &pending, Some(self.login_ttl))
            .await
            .map_err(unavailable)?;
        tracing::info!(reason = "test.started", tenant = %tenant, connection = %connection, "test sign-in sent to the IdP");
        Ok((
            test_id,
            Outcome::Upstream {
                redirect: started.redirect,
                binding: None,
            },
        ))
    }

    /// Finishes a test sign-in: validates the answer with every check, keeps
    /// the result for the portal, and sends the browser back to it.
    pub(super) async fn finish_test(
        &self,
        connector: Arc<dyn Connector>,
        pending: &PendingLogin,
        test: &TestSignIn,
        params: &CallbackParams,
    ) -> Outcome {
        let (tenant, connection) = (&pending.tenant, &pending.connection);
        let now = self.provider.clock.unix();
        let revision = match self.tenants.connection(tenant, connection).await {
            Ok(Some(c)) => c.revision,
            Ok(None) => {
                return page(
                    404,
                    "Test failed",
                    "This connection does not exist (any more).",
                    "callback.unknown_connection",
                )
            }
            Err(e) => return unavailable(e),
        };
        // A test passes only for what a real sign-in would accept.
        let completed = connector
            .complete(Some(&pending.connector_state), params)
            .await
            .and_then(|identity| identity.check_shape().map(|()| identity));
        let result = match completed {
            Ok(identity) => {
                let (identity, withheld) = self.tenants.vouch_email(tenant, connection, identity).await;
                tracing::info!(reason = "test.succeeded", tenant = %tenant, connection = %connection);
                TestResult {
                    connection: connection.clone(),
                    revision,
                    at: now,
                    ok: true,
                    reason: None,
                    message: None,
                    claims: claims_of(&identity),
                    attributes: identity.raw,
                    notes: withheld.map(|why| why.reason().to_owned()).into_iter().collect(),
                }
            }
            Err(e) => {
                tracing::warn!(reason = e.code, tenant = %tenant, connection = %connection, detail = %e.detail, "test sign-in failed");
                TestResult {
                    connection: connection.clone(),
                    revision,
                    at: now,
                    ok: false,
                    reason: Some(e.code.to_owned()),
                    message: Some(e.message),
                    attributes: BTreeMap::new(),
                    claims: BTreeMap::new(),
                    notes: Vec::new(),
                }
            }
        };
        if let Err(e) = self
            .store
            .put_json(&result_key(tenant, &test.id), &result, Some(TEST_RESULT_TTL))
            .await
        {
            return unavailable(e);
        }
        match Url::parse(&test.return_to) {
            Ok(u) => Outcome::Continue(u),
            Err(_) => page(400, "Test failed", "The portal address is invalid.", "test.bad_return"),
        }
    }

    /// The result of test `id` of `tenant`, if finished and kept.
    pub async fn test_result(&self, tenant: &TenantId, id: &str) -> Result<Option<TestResult>, StoreError> {
        if id.is_empty() || id.len() > 64 {
            return Ok(None);
        }
        self.store.get_json(&result_key(tenant, id)).await
    }

    /// Records a refused sign-in of `tenant` (reason and time only) in a
    /// ring of [`FAILED_SIGN_INS_KEPT`] slots. A failure to record is
    /// logged, never turned into another failure of the sign-in.
    /// Also counts it in `portcullis_sign_ins_total{result="failure"}` and
    /// records a `signin.failed` security event.
    pub async fn record_failure(&self, tenant: &TenantId, connection: Option<&ConnectionId>, reason: &'static str) {
        crate::meter::sign_in_failed(
            tenant.as_str(),
            connection.map_or(crate::meter::UNKNOWN, ConnectionId::as_str),
            reason,
        );
        self.audit_failure(tenant, connection, reason).await;
        let rec = FailedSignIn {
            at: self.provider.clock.unix(),
            connection: connection.cloned(),
            reason: reason.to_owned(),
        };
        let outcome = async {
            let n = self.store.incr(&failed_counter_key(tenant), FAILED_SIGN_IN_TTL).await?;
            self.store
                .put_json(
                    &failed_slot_key(tenant, n.rem_euclid(FAILED_SIGN_INS_KEPT)),
                    &rec,
                    Some(FAILED_SIGN_IN_TTL),
                )
                .await
        }
        .await;
        if let Err(e) = outcome {
            tracing::error!(reason = "failed_sign_in.not_recorded", tenant = %tenant, error = %e);
        }
    }

    /// Records a refused sign-in in the audit log (a security event with its
    /// reason code; never the IdP's answer).
    pub async fn audit_failure(&self, tenant: &TenantId, connection: Option<&ConnectionId>, reason: &str) {
        let event = crate::audit::AuditEvent::signin_failed(tenant, connection.map(ConnectionId::as_str), reason);
        self.provider.audit.security(event).await;
    }

    /// The tenant's recorded failed sign-ins, newest first.
    pub async fn failed_sign_ins(&self, tenant: &TenantId) -> Result<Vec<FailedSignIn>, StoreError> {
        // A record older than the tenant's is a predecessor's (a tenant
        // deleted, whose purge failed, and created again under its id).
        let Some(since) = self
            .tenants
            .get(tenant)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .map(|t| t.created_at.timestamp())
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for slot in 0..FAILED_SIGN_INS_KEPT {
            if let Some(r) = self
                .store
                .get_json::<FailedSignIn>(&failed_slot_key(tenant, slot))
                .await?
            {
                if r.at >= since {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|f| std::cmp::Reverse(f.at));
        Ok(out)
    }

    /// Forgets a deleted tenant's failed sign-ins.
    pub async fn purge_failed_sign_ins(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.store.delete(&failed_counter_key(tenant)).await?;
        for slot in 0..FAILED_SIGN_INS_KEPT {
            self.store.delete(&failed_slot_key(tenant, slot)).await?;
        }
        Ok(())
    }
}

/// The refusal of an answer for a connection that does not serve users.
pub(super) fn not_active(tenant: &TenantId, connection: &ConnectionId) -> Outcome {
    tracing::warn!(reason = "callback.connection_not_active", tenant = %tenant, connection = %connection);
    page(
        403,
        "Sign-in refused",
        "This sign-in connection is not active yet (it waits for a successful test) or was disabled. Ask your IT administrator.",
        "callback.connection_not_active",
    )
}

/// Maps an upstream failure for recording.
pub(super) fn reason_of(e: &UpstreamError) -> &'static str {
    e.code
}
