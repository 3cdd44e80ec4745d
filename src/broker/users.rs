//! Ending what a user, or a whole tenant's users, were issued: the admin
//! API's disable and delete, and the eager clean-up after a tenant is
//! deleted. Acceptance never depends on these finishing: every use checks
//! [`Directory::active`](crate::directory::Directory::active); these only
//! free the store and end sessions early.

use super::{session, Broker};
use crate::directory::{DisabledBy, Inactive, User};
use crate::ids::{ConnectionId, TenantId};
use crate::store::StoreError;
use std::time::Duration;

impl Broker {
    /// Ends the user's SSO sessions and refresh-token families.
    pub async fn revoke_user(&self, tenant: &TenantId, sub: &str) -> Result<(), StoreError> {
        session::delete_user_sessions(&self.store, tenant, sub).await?;
        self.provider.revoke_user_families(tenant, sub).await
    }

    /// Ends everything the user provisioned for a local account (`subject`)
    /// of `connection`, if any, was issued under its old credentials: after a
    /// password change or reset, or an admin's force-reset. The user's
    /// "not before" stamp is set first (so access tokens already issued, and
    /// any code or refresh family of an earlier authentication, are refused
    /// on use: `token.credentials_reset`), then its SSO sessions and refresh
    /// families end.
    pub async fn revoke_local_account(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let Some(sub) = self.provider.directory.sub_of(tenant, connection, subject).await? else {
            return Ok(false);
        };
        let now = self.provider.clock.unix();
        self.provider.directory.set_not_before(tenant, &sub, now).await?;
        self.revoke_user(tenant, &sub).await?;
        Ok(true)
    }

    /// [`Self::revoke_local_account`] once the new credentials are stored,
    /// in a task of its own: a request dropped meanwhile (its client gone)
    /// does not leave the new password in place with the old sessions and
    /// tokens alive, and a store that fails once is asked again (three
    /// tries, 100 ms then 1 s apart) before the failure is answered and
    /// logged (`local.revocation_failed`).
    pub async fn revoke_local_account_after_change(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let (broker, t, c, subject) = (self.clone(), tenant.clone(), connection.clone(), subject.to_owned());
        let task = async move {
            let mut waits = [Duration::from_millis(100), Duration::from_secs(1)].into_iter();
            loop {
                match broker.revoke_local_account(&t, &c, &subject).await {
                    Ok(done) => return Ok(done),
                    Err(e) => match waits.next() {
                        Some(wait) => {
                            tracing::warn!(reason = "local.revocation_retried", tenant = %t, connection = %c, error = %e);
                            tokio::time::sleep(wait).await;
                        }
                        None => {
                            tracing::error!(reason = "local.revocation_failed", tenant = %t, connection = %c, error = %e, "the new credentials are stored but earlier sessions and tokens may live on");
                            return Err(e);
                        }
                    },
                }
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(task))
            .await
            .map_err(|e| StoreError::Unavailable(format!("revocation task: {e}")))?
    }

    /// Whether the directory user of a local account has a second factor
    /// of Portcullis's own (a confirmed TOTP enrolment or a passkey).
    /// `false` if the account never signed in.
    pub async fn local_account_has_second_factor(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let Some(sub) = self.provider.directory.sub_of(tenant, connection, subject).await? else {
            return Ok(false);
        };
        self.has_second_factor(tenant, &sub).await
    }

    /// Whether the user `sub` has a second factor of Portcullis's own (a
    /// confirmed TOTP enrolment or a passkey).
    pub(super) async fn has_second_factor(&self, tenant: &TenantId, sub: &str) -> Result<bool, StoreError> {
        let mfa = self.mfa();
        let (totp, passkey) = tokio::try_join!(
            mfa.enrolled(tenant, sub),
            crate::mfa::passkey::has_any(&self.store, tenant, sub)
        )?;
        Ok(totp || passkey)
    }

    /// Deletes the directory user of a local account (with its sessions,
    /// families and MFA enrolment, see [`Broker::delete_user`]), so its
    /// `sub` is gone and every token issued to it is refused on use. `false`
    /// if the account never signed in.
    pub async fn delete_local_account(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let Some(sub) = self.provider.directory.sub_of(tenant, connection, subject).await? else {
            return Ok(false);
        };
        Ok(self.delete_user(tenant, &sub).await?.is_some())
    }

    /// Disables (or enables) the directory user of a local account, so the
    /// access tokens it already has are refused (accepted again) on use;
    /// disabling revokes its sessions and families. `false` if the account
    /// never signed in.
    pub async fn set_local_account_disabled(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
        subject: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let Some(sub) = self.provider.directory.sub_of(tenant, connection, subject).await? else {
            return Ok(false);
        };
        self.set_user_disabled(tenant, &sub, disabled, DisabledBy::LocalAccount)
            .await
    }

    /// Disables (or enables) a user; disabling revokes its sessions and
    /// families. `false` if there is no such user. `by` says whose disable
    /// it is ([`crate::directory::Directory::set_disabled`]).
    pub async fn set_user_disabled(
        &self,
        tenant: &TenantId,
        sub: &str,
        disabled: bool,
        by: DisabledBy,
    ) -> Result<bool, StoreError> {
        if !self.provider.directory.set_disabled(tenant, sub, disabled, by).await? {
            return Ok(false);
        }
        if disabled {
            self.revoke_user(tenant, sub).await?;
        }
        Ok(true)
    }

    /// Deletes a user, its identity link, sessions and families. Returns
    /// the user, if it existed.
    pub async fn delete_user(&self, tenant: &TenantId, sub: &str) -> Result<Option<User>, StoreError> {
        // Revoke first: should the deletion fail half-way, nothing of the
        // user keeps working (and its record is still there to retry).
        self.revoke_user(tenant, sub).await?;
        // mfa: the enrolment goes with the user (a new user gets a new `sub`
        // anyway; this frees the store and the sealed seed).
        crate::mfa::Mfa::new(self.store.clone(), self.provider.clock.clone())
            .reset(tenant, sub)
            .await?;
        self.provider.directory.delete(tenant, sub).await
    }

    /// Deletes the users of a deleted connection (those no longer active
    /// because of it: users of a connection re-created meanwhile are kept).
    pub async fn purge_connection_users(
        &self,
        tenant: &TenantId,
        connection: &ConnectionId,
    ) -> Result<usize, StoreError> {
        let directory = &self.provider.directory;
        let mut purged = 0;
        for sub in directory.subs(tenant).await? {
            let of_connection = directory
                .get(tenant, &sub)
                .await?
                .is_some_and(|u| &u.connection == connection);
            if !of_connection {
                continue;
            }
            if let Err(Inactive::ConnectionGone | Inactive::Superseded | Inactive::TenantGone) =
                directory.active(tenant, &sub).await?
            {
                self.delete_user(tenant, &sub).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Deletes every user of a tenant (after the tenant itself is gone).
    pub async fn purge_tenant_users(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let subs = self.provider.directory.subs(tenant).await?;
        for sub in &subs {
            self.delete_user(tenant, sub).await?;
        }
        Ok(subs.len())
    }
}
