//! The certificate expiry dates `/metrics` reports
//! (`portcullis_certificate_expiry_seconds{tenant,connection,use}`): read from
//! the stored connections, kept in memory so a scrape costs no store round
//! trip, and read again when this replica changed a connection or when the
//! copy is older than [`MAX_AGE`] (so another replica's change shows within
//! that time). The seconds are computed at scrape time from the injected clock.

use super::refresh::{der_not_after, pem_not_after};
use super::{RegistryError, TenantRegistry};
use crate::ids::{ConnectionId, TenantId};
use crate::upstream::ConnectionKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a copy serves scrapes before it is read again.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// One certificate's expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The tenant.
    pub tenant: TenantId,
    /// The connection.
    pub connection: ConnectionId,
    /// What the certificate is for: `idp_signing` (the soonest of the IdP's
    /// signing certificates), `sp` (our current SP certificate) or `sp_next`
    /// (the SP certificate published ahead of a rotation).
    pub usage: &'static str,
    /// Its `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// A list read from the store, and when.
type Kept = (Instant, Arc<Vec<CertificateExpiry>>);

/// The in-memory copy (shared by the clones of one registry).
#[derive(Default, Clone)]
pub struct ExpirySnapshot {
    inner: Arc<Mutex<Option<Kept>>>,
}

impl ExpirySnapshot {
    /// Forgets the copy: the next scrape reads the connections again.
    pub fn invalidate(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn fresh(&self) -> Option<Arc<Vec<CertificateExpiry>>> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|(at, _)| at.elapsed() < MAX_AGE)
            .map(|(_, v)| v.clone())
    }

    fn keep(&self, list: Arc<Vec<CertificateExpiry>>) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), list));
    }
}

/// The certificates of one connection (none for OIDC and dev connections).
pub fn of_connection(conn: &crate::upstream::Connection) -> Vec<CertificateExpiry> {
    let ConnectionKind::Saml(cfg) = &conn.kind else {
        return Vec::new();
    };
    let entry = |usage, not_after: chrono::DateTime<chrono::Utc>| CertificateExpiry {
        tenant: conn.tenant.clone(),
        connection: conn.id.clone(),
        usage,
        not_after: not_after.timestamp(),
    };
    let mut out = Vec::new();
    if let Some(na) = cfg.idp_certificates.iter().filter_map(|b| der_not_after(b)).min() {
        out.push(entry("idp_signing", na));
    }
    if let Some(na) = pem_not_after(&cfg.sp_certificate_pem) {
        out.push(entry("sp", na));
    }
    if let Some(na) = cfg.sp_next_key.as_ref().and_then(|k| pem_not_after(&k.certificate_pem)) {
        out.push(entry("sp_next", na));
    }
    out
}

impl TenantRegistry {
    /// Every certificate of every connection, from the in-memory copy when it
    /// is fresh, else read from the store (and kept).
    pub async fn certificate_expiries(&self) -> Result<Arc<Vec<CertificateExpiry>>, RegistryError> {
        if let Some(list) = self.expiries.fresh() {
            return Ok(list);
        }
        let mut out = Vec::new();
        for t in self.list().await?.iter().filter_map(|t| TenantId::parse(t).ok()) {
            for c in self.connection_ids(&t).await? {
                if let Some(conn) = self.connection(&t, &c).await? {
                    out.extend(of_connection(&conn));
                }
            }
        }
        let list = Arc::new(out);
        self.expiries.keep(list.clone());
        Ok(list)
    }
}
