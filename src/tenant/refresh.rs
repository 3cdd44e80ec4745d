//! Metadata that keeps itself current, and certificate expiry warnings.
//!
//! A SAML connection created from a `metadata_url` fetches its IdP's
//! metadata again on a schedule (`[metadata] refresh_interval_secs`) or on
//! demand (`POST /admin/v1/tenants/{id}/connections/{cid}/refresh`):
//!
//! * The request goes through the guarded outbound client and carries the
//!   validators of the last answer (`If-None-Match`, `If-Modified-Since`);
//!   a 304 changes nothing but the refresh state.
//! * A stored URL carrying a user name or password is not fetched
//!   (`saml.metadata_url_credentials`, before any request). A document
//!   that cannot be fetched, is larger than `saml::MAX_METADATA_BYTES`
//!   (`saml.metadata_too_large`, read no further), is not well-formed,
//!   describes another entity, or has no signing certificate that is still
//!   valid (`metadata.no_usable_certificate`, the rule set-up applies too) is
//!   refused: the last good configuration keeps serving, and the refusal is
//!   recorded in the connection's [`RefreshState`] (`last_error`).
//! * A valid document that differs from the stored one updates the
//!   connection in place: the IdP part (endpoints, signing certificates) is
//!   replaced, the SP part (keys, entity id, ACS URL, mapping, policy) is
//!   kept, and `revision` changes so every replica rebuilds its connector.
//!   Signing certificates are taken as published: an IdP that rotates
//!   publishes the new certificate next to the old one first, so both verify
//!   during the overlap, and drops the old one later.
//! * On the schedule, one replica at a time fetches a connection's metadata:
//!   the first to claim `metadata-refresh-claim:<connection>` in the store
//!   (`put_if_absent` with the interval as TTL) does the work for that
//!   interval; the others skip it.
//!
//! OIDC connections need none of this: their discovery document and JWKS are
//! cached per connector for an hour and fetched again after that (and the
//! JWKS at once, rate-limited, when a token names an unknown `kid`), see
//! `upstream::oidc::provider`.
//!
//! Certificate expiry: [`certificate_expiry`] is the soonest `not_after` of a
//! connection's IdP signing and SP certificates; [`expiry_events`] reports
//! each connection crossing the 30/14/3-day thresholds (or expired) once per
//! threshold and certificate date (a store marker), for the audit log.

use super::{RegistryError, TenantRegistry};
use crate::clock::SharedClock;
use crate::ids::{ConnectionId, TenantId};
use crate::store::{Key, SharedStore, StoreJson};
use crate::upstream::http::CappedError;
use crate::upstream::{saml, Connection, ConnectionKind, UpstreamContext};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the last refresh attempts of one connection left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshState {
    /// The `ETag` of the last document taken (sent as `If-None-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The `Last-Modified` of the last document taken (sent as `If-Modified-Since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// When a fetch was last attempted.
    #[serde(default)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When a fetch last succeeded (a usable document, or a 304).
    #[serde(default)]
    pub last_success_at: Option<DateTime<Utc>>,
    /// When a fetched document last changed the connection.
    #[serde(default)]
    pub last_changed_at: Option<DateTime<Utc>>,
    /// Why the last attempt was refused; `None` after a success.
    #[serde(default)]
    pub last_error: Option<RefreshProblem>,
}

/// Why fetched metadata was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshProblem {
    /// Stable reason code, e.g. `metadata.unreachable`.
    pub code: String,
    /// A sentence for the admin.
    pub detail: String,
}

/// What one scheduled round did.
#[derive(Debug, Default)]
pub struct RefreshRound {
    /// Connections whose metadata was fetched (taken or not).
    pub fetched: usize,
    /// Connections updated from their metadata: (before, after).
    pub updated: Vec<(Connection, Connection)>,
}

/// What a refresh did.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// The IdP answered 304 or the same configuration: nothing changed.
    Unchanged(Connection),
    /// The connection was updated in place (new `revision`); the second
    /// is the connection as it was before.
    Updated(Connection, Box<Connection>),
    /// Another replica holds this interval's claim: nothing was fetched.
    Skipped,
}

/// Why a refresh did not run or was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The connection does not exist.
    #[error("there is no such connection")]
    NotFound,
    /// The connection has no metadata URL to fetch.
    #[error("the connection was not created from a metadata_url, so there is nothing to fetch")]
    NotRefreshable,
    /// The fetched metadata was refused; the last good configuration still serves.
    #[error("{}: {}", .0.code, .0.detail)]
    Refused(RefreshProblem),
    /// The store failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn state_key(t: &TenantId, c: &ConnectionId) -> Key {
    Key::tenant(t.as_str(), "config", format!("metadata-refresh:{c}"))
}
fn claim_key(t: &TenantId, c: &ConnectionId) -> Key {
    Key::tenant(t.as_str(), "config", format!("metadata-refresh-claim:{c}"))
}
fn warning_key(t: &TenantId, c: &ConnectionId, not_after: i64, level: ExpiryLevel) -> Key {
    Key::tenant(
        t.as_str(),
        "config",
        format!("certificate-warning:{c}:{not_after}:{}", level.as_str()),
    )
}

/// Metadata refresh over the registry, the store and the outbound client.
#[derive(Clone)]
pub struct MetadataRefresher {
    /// Tenants and connections.
    pub tenants: TenantRegistry,
    /// Outbound client, clock and store.
    pub ctx: UpstreamContext,
}

/// How a refresh was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule: at most one fetch per connection per `interval` across
    /// all replicas.
    Scheduled {
        /// The refresh interval.
        interval: std::time::Duration,
    },
    /// An admin asked for it now.
    Now,
}

impl MetadataRefresher {
    /// A refresher over `tenants` and `ctx`.
    pub fn new(tenants: TenantRegistry, ctx: UpstreamContext) -> Self {
        Self { tenants, ctx }
    }

    fn store(&self) -> &SharedStore {
        &self.ctx.store
    }

    fn clock(&self) -> &SharedClock {
        &self.ctx.clock
    }

    /// The refresh state of a connection (default when never refreshed).
    pub async fn state(&self, t: &TenantId, c: &ConnectionId) -> Result<RefreshState, RegistryError> {
        Ok(self.store().get_json(&state_key(t, c)).await?.unwrap_or_default())
    }

    /// Refreshes every SAML connection of every tenant that came from a
    /// metadata URL, skipping those another replica claimed for this
    /// interval. Failures are logged and recorded per connection; one bad
    /// connection never stops the others. Returns how many were fetched.
    pub async fn refresh_all(&self, interval: std::time::Duration) -> RefreshRound {
        let mut round = RefreshRound::default();
        let tenants = match self.tenants.list().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(reason = "metadata.refresh_failed", error = %e, "cannot list tenants");
                return round;
            }
        };
        for t in tenants.iter().filter_map(|t| TenantId::parse(t).ok()) {
            let ids = match self.tenants.connection_ids(&t).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(reason = "metadata.refresh_failed", tenant = %t, error = %e, "cannot list connections");
                    continue;
                }
            };
            for c in ids {
                match self.refresh(&t, &c, Trigger::Scheduled { interval }).await {
                    Ok(RefreshOutcome::Skipped) | Err(RefreshError::NotRefreshable | RefreshError::NotFound) => {}
                    Ok(RefreshOutcome::Updated(after, before)) => {
                        round.fetched += 1;
                        round.updated.push((*before, after));
                    }
                    Ok(RefreshOutcome::Unchanged(_)) | Err(RefreshError::Refused(_)) => round.fetched += 1,
                    Err(RefreshError::Registry(RegistryError::Changed(_))) => {
                        // An admin change landed while fetching: it wins; the
                        // next round starts from it.
                        tracing::info!(reason = "metadata.refresh_conflict", tenant = %t, connection = %c, "connection changed during refresh; skipped this round")
                    }
                    Err(RefreshError::Registry(e)) => {
                        tracing::warn!(reason = "metadata.refresh_failed", tenant = %t, connection = %c, error = %e)
                    }
                }
            }
        }
        round
    }

    /// Fetches the metadata of connection `c` of tenant `t` and takes it if
    /// it is usable and differs (see the module documentation).
    pub async fn refresh(
        &self,
        t: &TenantId,
        c: &ConnectionId,
        trigger: Trigger,
    ) -> Result<RefreshOutcome, RefreshError> {
        let conn = self.tenants.connection(t, c).await?.ok_or(RefreshError::NotFound)?;
        let ConnectionKind::Saml(cfg) = &conn.kind else {
            return Err(RefreshError::NotRefreshable);
        };
        let Some(url) = cfg.metadata_url.clone() else {
            return Err(RefreshError::NotRefreshable);
        };
        if let Trigger::Scheduled { interval } = trigger {
            let claimed = self
                .store()
                .put_if_absent(&claim_key(t, c), b"1", Some(interval))
                .await
                .map_err(RegistryError::from)?;
            if !claimed {
                return Ok(RefreshOutcome::Skipped);
            }
        }
        let mut state = self.state(t, c).await?;
        let now = self.clock().now();
        state.last_attempt_at = Some(now);
        let result = self.fetch_and_apply(&conn, &url, &mut state).await;
        crate::meter::metadata_refresh(
            t.as_str(),
            c.as_str(),
            match &result {
                Ok(RefreshOutcome::Updated(..)) => "updated",
                Ok(_) => "unchanged",
                Err(RefreshError::Refused(_)) => "refused",
                Err(_) => "failed",
            },
        );
        match &result {
            Ok(outcome) => {
                state.last_success_at = Some(now);
                state.last_error = None;
                let changed = matches!(outcome, RefreshOutcome::Updated(..));
                if changed {
                    state.last_changed_at = Some(now);
                }
                tracing::info!(
                    reason = if changed { "metadata.updated" } else { "metadata.unchanged" },
                    tenant = %t,
                    connection = %c,
                    "IdP metadata refreshed"
                );
            }
            Err(RefreshError::Refused(problem)) => {
                tracing::warn!(
                    reason = %problem.code,
                    tenant = %t,
                    connection = %c,
                    detail = %problem.detail,
                    "fetched IdP metadata refused; the last good configuration keeps serving"
                );
                state.last_error = Some(problem.clone());
            }
            Err(_) => {}
        }
        self.store()
            .put_json(&state_key(t, c), &state, None)
            .await
            .map_err(RegistryError::from)?;
        result
    }

    async fn fetch_and_apply(
        &self,
        conn: &Connection,
        url: &url::Url,
        state: &mut RefreshState,
    ) -> Result<RefreshOutcome, RefreshError> {
        let ConnectionKind::Saml(cfg) = &conn.kind else {
            return Err(RefreshError::NotRefreshable);
        };
        let refused = |code: &str, detail: String| {
            RefreshError::Refused(RefreshProblem {
                code: code.to_owned(),
                detail,
            })
        };
        // A URL stored with a user name or password before set-up refused
        // them (or restored from a backup) is never fetched: the password
        // would go out with every refresh, and the URL is shown and logged.
        if saml::carries_credentials(url) {
            return Err(refused(
                saml::METADATA_URL_CREDENTIALS,
                "the stored metadata URL carries a user name or password, so it is not fetched: \
                 set a metadata_url without them"
                    .into(),
            ));
        }
        let mut request = http::Request::get(url.as_str()).header(http::header::ACCEPT, saml::METADATA_ACCEPT);
        if let Some(etag) = &state.etag {
            request = request.header(http::header::IF_NONE_MATCH, etag.as_str());
        }
        if let Some(lm) = &state.last_modified {
            request = request.header(http::header::IF_MODIFIED_SINCE, lm.as_str());
        }
        let request = request.body(Vec::new()).map_err(|e| {
            refused(
                "metadata.unreachable",
                format!("the metadata URL cannot be requested: {e}"),
            )
        })?;
        let resp = match self.ctx.http.execute_within(request, saml::MAX_METADATA_BYTES).await {
            Ok(resp) => resp,
            Err(CappedError::OverCap { limit, .. }) => {
                return Err(refused(
                    saml::METADATA_TOO_LARGE,
                    format!(
                        "the metadata is larger than {} KiB, far more than one IdP's metadata needs",
                        limit / 1024
                    ),
                ))
            }
            Err(CappedError::Failed(e)) => {
                // The problem is shown to the tenant's admins: the log keeps the detail.
                tracing::info!(reason = e.code, tenant = %conn.tenant, connection = %conn.id, detail = %e.detail, "IdP metadata could not be fetched");
                return Err(refused(
                    "metadata.unreachable",
                    format!("the metadata could not be fetched: {}", e.for_admin()),
                ));
            }
        };
        let status = resp.status();
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(RefreshOutcome::Unchanged(conn.clone()));
        }
        if !status.is_success() {
            return Err(refused(
                "metadata.unreachable",
                format!("the metadata URL answered HTTP {}", status.as_u16()),
            ));
        }
        let header = |name: http::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 256)
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(http::header::ETAG), header(http::header::LAST_MODIFIED));
        let xml = String::from_utf8(resp.into_body())
            .map_err(|_| refused("metadata.invalid", "the metadata is not UTF-8".into()))?;
        let allow_private = self.ctx.http.config().allow_private_networks;
        let next = crate::upstream::saml::with_idp_metadata(cfg, &xml, allow_private)
            .map_err(|m| refused("metadata.invalid", m))?;
        if !saml::any_certificate_current(&next.idp_certificates, self.clock().unix()) {
            return Err(refused(
                saml::NO_USABLE_CERTIFICATE,
                "every signing certificate in the metadata has expired".into(),
            ));
        }
        let mut updated = conn.clone();
        updated.kind = ConnectionKind::Saml(next.clone());
        // Build it once, so a configuration that cannot work never replaces one that does.
        crate::upstream::build(&updated, &self.ctx).map_err(|e| {
            refused(
                "metadata.invalid",
                format!("the metadata cannot be used: {}", e.message),
            )
        })?;
        if !crate::upstream::saml::idp_part_differs(cfg, &next) {
            state.etag = etag;
            state.last_modified = last_modified;
            return Ok(RefreshOutcome::Unchanged(conn.clone()));
        }
        updated.revision = next_revision(conn.revision);
        // Compare-and-set against the connection this refresh started from:
        // a PATCH that landed meanwhile wins, and this round is skipped
        // (`RegistryError::Changed`). The validators are kept only when the
        // metadata was taken, so the next round fetches it again in full.
        // The metadata is read for the entity id the connection has
        // (`with_idp_metadata`), so the issuer cannot change here.
        self.tenants
            .update_connection(conn, &updated, super::IssuerChange::NewUsers)
            .await?;
        state.etag = etag;
        state.last_modified = last_modified;
        Ok(RefreshOutcome::Updated(updated, Box::new(conn.clone())))
    }

    /// The refresh and expiry fields of a connection's admin answer:
    /// `metadata_refresh` (SAML from a URL only), `certificate_expires_at`
    /// and `certificate_warning`. The connection answer (`describe`) merges
    /// these in.
    pub async fn describe_extra(&self, conn: &Connection) -> Result<serde_json::Map<String, Value>, RegistryError> {
        let mut out = serde_json::Map::new();
        if let ConnectionKind::Saml(cfg) = &conn.kind {
            if cfg.metadata_url.is_some() {
                let state = self.state(&conn.tenant, &conn.id).await?;
                out.insert(
                    "metadata_refresh".into(),
                    json!({
                        "last_attempt_at": state.last_attempt_at,
                        "last_success_at": state.last_success_at,
                        "last_changed_at": state.last_changed_at,
                        "last_error": state.last_error,
                    }),
                );
            }
        }
        let expires = certificate_expiry(conn);
        out.insert("certificate_expires_at".into(), json!(expires));
        out.insert(
            "certificate_warning".into(),
            json!(expires
                .and_then(|e| ExpiryLevel::at(e, self.clock().now()))
                .map(ExpiryLevel::as_str)),
        );
        Ok(out)
    }
}

/// A revision different from `old` (the connector cache compares for equality).
fn next_revision(old: u64) -> u64 {
    let r: u64 = rand::random();
    if r == old {
        r.wrapping_add(1)
    } else {
        r
    }
}

/// How close a certificate is to its `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExpiryLevel {
    /// Within 30 days.
    #[serde(rename = "30_days")]
    Days30,
    /// Within 14 days.
    #[serde(rename = "14_days")]
    Days14,
    /// Within 3 days.
    #[serde(rename = "3_days")]
    Days3,
    /// Already expired.
    #[serde(rename = "expired")]
    Expired,
}

impl ExpiryLevel {
    /// The level of a certificate expiring at `not_after`, seen at `now`;
    /// `None` when more than 30 days are left.
    pub fn at(not_after: DateTime<Utc>, now: DateTime<Utc>) -> Option<Self> {
        let left = not_after - now;
        if left <= Duration::zero() {
            Some(Self::Expired)
        } else if left <= Duration::days(3) {
            Some(Self::Days3)
        } else if left <= Duration::days(14) {
            Some(Self::Days14)
        } else if left <= Duration::days(30) {
            Some(Self::Days30)
        } else {
            None
        }
    }

    /// The name used in the API and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Days30 => "30_days",
            Self::Days14 => "14_days",
            Self::Days3 => "3_days",
            Self::Expired => "expired",
        }
    }
}

/// `not_after` of a base64 DER certificate, `None` when it does not parse.
pub fn der_not_after(b64: &str) -> Option<DateTime<Utc>> {
    let der = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()).ok()?;
    let cert = openssl::x509::X509::from_der(&der).ok()?;
    asn1_to_utc(cert.not_after())
}

/// `not_after` of a PEM certificate, `None` when it does not parse.
pub fn pem_not_after(pem: &str) -> Option<DateTime<Utc>> {
    let cert = openssl::x509::X509::from_pem(pem.as_bytes()).ok()?;
    asn1_to_utc(cert.not_after())
}

fn asn1_to_utc(t: &openssl::asn1::Asn1TimeRef) -> Option<DateTime<Utc>> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(t).ok()?;
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    DateTime::<Utc>::from_timestamp(secs, 0)
}

/// The soonest `not_after` of a connection's IdP signing certificates and SP
/// certificate; `None` for connections without certificates (OIDC, dev).
pub fn certificate_expiry(conn: &Connection) -> Option<DateTime<Utc>> {
    let ConnectionKind::Saml(cfg) = &conn.kind else {
        return None;
    };
    cfg.idp_certificates
        .iter()
        .filter_map(|b| der_not_after(b))
        .chain(pem_not_after(&cfg.sp_certificate_pem))
        .min()
}

/// One certificate warning to record (audit log) and log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateWarning {
    /// The tenant.
    pub tenant: TenantId,
    /// The connection.
    pub connection: ConnectionId,
    /// The soonest `not_after` of the connection's certificates.
    pub not_after: DateTime<Utc>,
    /// The threshold crossed.
    pub level: ExpiryLevel,
}

/// The certificate warnings due now, each returned once per threshold and
/// certificate date across all replicas (a `put_if_absent` marker that lives
/// until 30 days after the certificate's expiry). Each is logged with reason
/// `certificate.expiring`; the caller passes them to the audit log.
pub async fn expiry_events(
    tenants: &TenantRegistry,
    store: &SharedStore,
    now: DateTime<Utc>,
) -> Result<Vec<CertificateWarning>, RegistryError> {
    let mut out = Vec::new();
    for t in tenants.list().await?.iter().filter_map(|t| TenantId::parse(t).ok()) {
        for c in tenants.connection_ids(&t).await? {
            let Some(conn) = tenants.connection(&t, &c).await? else {
                continue;
            };
            let Some(not_after) = certificate_expiry(&conn) else {
                continue;
            };
            let Some(level) = ExpiryLevel::at(not_after, now) else {
                continue;
            };
            let keep = (not_after + Duration::days(30) - now).to_std().unwrap_or_default()
                + std::time::Duration::from_secs(86_400);
            let first = store
                .put_if_absent(&warning_key(&t, &c, not_after.timestamp(), level), b"1", Some(keep))
                .await?;
            if first {
                tracing::warn!(
                    reason = "certificate.expiring",
                    tenant = %t,
                    connection = %c,
                    not_after = %not_after,
                    level = level.as_str(),
                    "a certificate of the connection expires soon (or has expired)"
                );
                out.push(CertificateWarning {
                    tenant: t.clone(),
                    connection: c,
                    not_after,
                    level,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_thresholds() {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let at = |d: i64| ExpiryLevel::at(now + Duration::hours(d), now);
        assert_eq!(at(31 * 24), None);
        assert_eq!(at(30 * 24), Some(ExpiryLevel::Days30));
        assert_eq!(at(14 * 24), Some(ExpiryLevel::Days14));
        assert_eq!(at(15 * 24), Some(ExpiryLevel::Days30));
        assert_eq!(at(3 * 24), Some(ExpiryLevel::Days3));
        assert_eq!(at(1), Some(ExpiryLevel::Days3));
        assert_eq!(at(0), Some(ExpiryLevel::Expired));
        assert_eq!(at(-5), Some(ExpiryLevel::Expired));
    }
}
