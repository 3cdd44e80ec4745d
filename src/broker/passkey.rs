//! Passkeys in the sign-in flow: as the second factor of a waiting answer
//! (`/mfa/{tenant}/{connection}/passkey`: use one at the challenge, or
//! register one at the enrolment), and managed by a signed-in user
//! (`/mfa/{tenant}/passkeys`: register, list, remove). The ceremonies
//! themselves are `mfa::passkey`'s; this module ties them to the waiting
//! answer (same tenant, connection, user and browser, the MFA handle named
//! in the ceremony) and to the SSO session. A registration at a sign-in's
//! enrolment adds the account's first second factor only: the passkey page
//! and the registration both look again whether the account has one by
//! now (`mfa.enrolment_changed`).

use super::second_factor::{own_factor, refused, store_failed, waiting_key, MfaAnswer, Step, MFA_TTL};
use super::session::BrowserSso;
use super::Broker;
use crate::ids::{ConnectionId, TenantId};
use crate::mfa::passkey::{PasskeyError, Passkeys, Purpose, Started, StoredPasskey};
use crate::mfa::AddedFrom;
use crate::store::StoreJson;
use crate::tenant::LocalMfa;

/// What a passkey page does in the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `navigator.credentials.create`: register a new passkey.
    Register,
    /// `navigator.credentials.get`: sign in with one.
    Authenticate,
}

/// One passkey as listed to its owner.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The credential id (base64url).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Registered (Unix seconds).
    pub created_at: i64,
    /// Last used (Unix seconds).
    pub last_used_at: Option<i64>,
}

impl From<&StoredPasskey> for Listed {
    fn from(p: &StoredPasskey) -> Self {
        Self {
            id: p.id.clone(),
            name: p.name.clone(),
            created_at: p.created_at,
            last_used_at: p.last_used_at,
        }
    }
}

/// What a passkey page shows.
#[derive(Debug, Clone)]
pub struct PasskeyPage {
    /// HTTP status.
    pub status: u16,
    /// The tenant.
    pub tenant: TenantId,
    /// The connection of the waiting sign-in (`None`: self-service).
    pub connection: Option<ConnectionId>,
    /// The tenant's display name.
    pub tenant_name: String,
    /// Who is signing in or signed in.
    pub who: String,
    /// Register or authenticate.
    pub mode: Mode,
    /// The ceremony's one-time handle.
    pub ceremony: String,
    /// The WebAuthn options (JSON) for the page's script.
    pub options: String,
    /// The waiting sign-in's handle (empty for self-service).
    pub mfa_handle: String,
    /// Where the sign-in goes afterwards (empty for self-service).
    pub app: String,
    /// Why the last attempt was refused (a reason code).
    pub error: Option<&'static str>,
    /// What just succeeded.
    pub notice: Option<&'static str>,
    /// The user's passkeys (self-service).
    pub passkeys: Vec<Listed>,
}

/// The broker's answer to a passkey page.
#[derive(Debug)]
pub enum PasskeyAnswer {
    /// Show the passkey page.
    Page(PasskeyPage),
    /// Anything else: an MFA page or an outcome.
    Mfa(MfaAnswer),
}

/// What a signed-in user asks on their passkeys page.
#[derive(Debug)]
pub enum Manage {
    /// Show the page.
    Show,
    /// Finish a registration: the ceremony, the browser's credential, a name.
    Register {
        /// The ceremony's handle.
        ceremony: String,
        /// The credential JSON.
        credential: String,
        /// The name given.
        name: String,
    },
    /// Remove the passkey with this id.
    Remove {
        /// The credential id.
        id: String,
    },
}

fn disabled() -> PasskeyAnswer {
    tracing::info!(reason = "passkey.disabled", "passkeys are not enabled");
    PasskeyAnswer::Mfa(refused(404, "Passkeys are not available here.", "passkey.disabled"))
}

impl Broker {
    fn passkey_service(&self) -> Option<&Passkeys> {
        self.passkeys.as_ref()
    }

    /// `GET /mfa/{tenant}/{connection}/passkey?handle=…`: the passkey step
    /// of a waiting answer: use a passkey (challenge) or register one
    /// (enrolment).
    pub async fn passkey_mfa_show(
        &self,
        tenant: &str,
        connection: &str,
        handle: &str,
        browser: Option<&str>,
    ) -> PasskeyAnswer {
        let Some(pk) = self.passkey_service() else {
            return disabled();
        };
        let (mut w, tenant, connection) = match self.waiting(tenant, connection, handle, browser).await {
            Ok(found) => found,
            Err(a) => return PasskeyAnswer::Mfa(a),
        };
        // At the enrolment the page starts a registration: only while the
        // account has no second factor.
        if let Err(a) = self.enrolment_still_first(&mut w, handle, &tenant, &connection).await {
            return PasskeyAnswer::Mfa(a);
        }
        self.passkey_step_page(
            pk,
            &w,
            &tenant,
            &connection,
            handle,
            browser.unwrap_or_default(),
            None,
            None,
        )
        .await
    }

    /// The passkey page of a waiting answer at its step, with a new ceremony.
    #[allow(clippy::too_many_arguments)]
    async fn passkey_step_page(
        &self,
        pk: &Passkeys,
        w: &super::second_factor::Waiting,
        tenant: &TenantId,
        connection: &ConnectionId,
        handle: &str,
        browser: &str,
        error: Option<&'static str>,
        notice: Option<&'static str>,
    ) -> PasskeyAnswer {
        let v = &w.validated;
        let who = v
            .identity
            .email
            .clone()
            .or_else(|| v.identity.name.clone())
            .unwrap_or_else(|| v.identity.subject.clone());
        let started = match w.step {
            Step::Challenge => match pk.start_second_factor(tenant, &v.sub, handle, browser).await {
                Ok(Some(s)) => (Mode::Authenticate, s),
                Ok(None) => {
                    return PasskeyAnswer::Mfa(self.mfa_page(w, handle, Some("passkey.none"), Vec::new()).await)
                }
                Err(PasskeyError::Store(e)) => return PasskeyAnswer::Mfa(store_failed(e)),
                Err(e) => return PasskeyAnswer::Mfa(self.mfa_page(w, handle, Some(e.reason()), Vec::new()).await),
            },
            Step::Enrol => match pk
                .start_registration(tenant, &v.sub, connection, &who, Some(handle.to_owned()), browser)
                .await
            {
                Ok(s) => (Mode::Register, s),
                Err(PasskeyError::Store(e)) => return PasskeyAnswer::Mfa(store_failed(e)),
                Err(e) => return PasskeyAnswer::Mfa(self.mfa_page(w, handle, Some(e.reason()), Vec::new()).await),
            },
            Step::Done => return PasskeyAnswer::Mfa(self.mfa_page(w, handle, None, Vec::new()).await),
        };
        let (
            mode,
            Started {
                handle: ceremony,
                options,
            },
        ) = started;
        let tenant_name = match self.tenants.get(tenant).await {
            Ok(t) => t.map_or_else(|| tenant.to_string(), |t| t.name.clone()),
            Err(e) => return PasskeyAnswer::Mfa(store_failed(e)),
        };
        PasskeyAnswer::Page(PasskeyPage {
            status: if error.is_some() { 400 } else { 200 },
            tenant: tenant.clone(),
            connection: Some(connection.clone()),
            tenant_name,
            who,
            mode,
            ceremony,
            options,
            mfa_handle: handle.to_owned(),
            app: v.request.redirect_uri.clone(),
            error,
            notice,
            passkeys: Vec::new(),
        })
    }

    /// `POST /mfa/{tenant}/{connection}/passkey`: the browser's answer to
    /// the passkey step. A passkey used at the challenge opens the session
    /// (`amr` + `hwk`, `user` when the authenticator verified the person,
    /// `mfa`); a passkey registered at the enrolment is then asked for.
    #[allow(clippy::too_many_arguments)]
    pub async fn passkey_mfa_submit(
        &self,
        tenant: &str,
        connection: &str,
        handle: &str,
        browser: Option<&str>,
        ceremony: &str,
        credential: &str,
        name: &str,
        sso: &mut BrowserSso,
    ) -> PasskeyAnswer {
        let Some(pk) = self.passkey_service() else {
            return disabled();
        };
        let (mut w, tenant, connection) = match self.waiting(tenant, connection, handle, browser).await {
            Ok(found) => found,
            Err(a) => return PasskeyAnswer::Mfa(a),
        };
        let sub = w.validated.sub.clone();
        let purpose = match pk.take(&tenant, ceremony, browser).await {
            Ok(p) => p,
            Err(e) => return self.passkey_refused(&w, handle, &tenant, &connection, e).await,
        };
        match (purpose, w.step) {
            (
                Purpose::SecondFactor {
                    sub: for_sub,
                    mfa_handle,
                    state,
                },
                Step::Challenge,
            ) if for_sub == sub && mfa_handle == handle => {
                match pk.finish_second_factor(&tenant, &sub, &state, credential).await {
                    Ok(used) => {
                        tracing::info!(reason = "passkey.verified", tenant = %tenant, connection = %connection, "passkey second factor passed");
                        let methods: &[&str] = if used.user_verified {
                            &["hwk", "user", "mfa"]
                        } else {
                            &["hwk", "mfa"]
                        };
                        PasskeyAnswer::Mfa(
                            self.finish_second_factor(&tenant, &connection, handle, sso, methods)
                                .await,
                        )
                    }
                    Err(e) => self.passkey_refused(&w, handle, &tenant, &connection, e).await,
                }
            }
            (
                Purpose::Register {
                    sub: for_sub,
                    connection: for_connection,
                    mfa_handle: Some(mfa_handle),
                    state,
                },
                Step::Enrol,
            ) if for_sub == sub && for_connection == connection && mfa_handle == handle => {
                // The account may have a second factor by now (the owner
                // enrolled elsewhere since this page was shown).
                if let Err(a) = self.enrolment_still_first(&mut w, handle, &tenant, &connection).await {
                    return PasskeyAnswer::Mfa(a);
                }
                match pk
                    .finish_registration(&tenant, &sub, &connection, AddedFrom::SignIn, &state, credential, name)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(reason = "passkey.registered", tenant = %tenant, connection = %connection, "passkey registered at enrolment");
                        self.mfa_audit(&tenant, &connection, &sub, "passkey.registered").await;
                        // Registered: now it is used, like any second factor.
                        w.step = Step::Challenge;
                        if let Err(e) = self
                            .store
                            .put_json(&waiting_key(&tenant, handle), &w, Some(MFA_TTL))
                            .await
                        {
                            return PasskeyAnswer::Mfa(store_failed(e));
                        }
                        self.passkey_step_page(
                            pk,
                            &w,
                            &tenant,
                            &connection,
                            handle,
                            browser.unwrap_or_default(),
                            None,
                            Some("passkey.registered"),
                        )
                        .await
                    }
                    // A factor appeared between the look before and the write.
                    Err(PasskeyError::EnrolmentChanged) => {
                        PasskeyAnswer::Mfa(self.enrolment_changed(&mut w, handle, &tenant, &connection).await)
                    }
                    Err(e) => self.passkey_refused(&w, handle, &tenant, &connection, e).await,
                }
            }
            _ => {
                self.passkey_refused(&w, handle, &tenant, &connection, PasskeyError::Mismatch)
                    .await
            }
        }
    }

    async fn passkey_refused(
        &self,
        w: &super::second_factor::Waiting,
        handle: &str,
        tenant: &TenantId,
        connection: &ConnectionId,
        e: PasskeyError,
    ) -> PasskeyAnswer {
        let reason = e.reason();
        if let PasskeyError::Store(e) = e {
            return PasskeyAnswer::Mfa(store_failed(e));
        }
        tracing::warn!(reason, tenant = %tenant, connection = %connection, "passkey refused");
        self.record_failure(tenant, Some(connection), reason).await;
        PasskeyAnswer::Mfa(self.mfa_page(w, handle, Some(reason), Vec::new()).await)
    }

    /// `/mfa/{tenant}/passkeys`: a signed-in user (of a connection with
    /// Portcullis's own factors, tenant `local_mfa` not off) lists,
    /// registers and removes their passkeys. `browser` is the secret this
    /// browser's session holds for passkey ceremonies.
    pub async fn passkeys_manage(&self, tenant: &str, sso: &BrowserSso, browser: &str, ask: Manage) -> PasskeyAnswer {
        let Some(pk) = self.passkey_service() else {
            return disabled();
        };
        let (tenant, connection, sub, who, tenant_name) = match self.signed_in_own_factor(tenant, sso).await {
            Ok(found) => found,
            Err(a) => return PasskeyAnswer::Mfa(a),
        };
        let (mut error, mut notice) = (None, None);
        match ask {
            Manage::Show => {}
            Manage::Register {
                ceremony,
                credential,
                name,
            } => {
                let outcome = match pk.take(&tenant, &ceremony, Some(browser)).await {
                    Ok(Purpose::Register {
                        sub: for_sub,
                        connection: for_connection,
                        mfa_handle: None,
                        state,
                    }) if for_sub == sub && for_connection == connection => {
                        pk.finish_registration(
                            &tenant,
                            &sub,
                            &connection,
                            AddedFrom::Session,
                            &state,
                            &credential,
                            &name,
                        )
                        .await
                    }
                    Ok(_) => Err(PasskeyError::Mismatch),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(_) => {
                        tracing::info!(reason = "passkey.registered", tenant = %tenant, connection = %connection, "passkey registered");
                        self.mfa_audit(&tenant, &connection, &sub, "passkey.registered").await;
                        notice = Some("passkey.registered");
                    }
                    Err(PasskeyError::Store(e)) => return PasskeyAnswer::Mfa(store_failed(e)),
                    Err(e) => {
                        tracing::warn!(reason = e.reason(), tenant = %tenant, connection = %connection, "passkey registration refused");
                        error = Some(e.reason());
                    }
                }
            }
            Manage::Remove { id } => match pk.remove(&tenant, &sub, &id).await {
                Ok(_) => {
                    tracing::info!(reason = "passkey.removed", tenant = %tenant, connection = %connection, "passkey removed");
                    self.mfa_audit(&tenant, &connection, &sub, "passkey.removed").await;
                    notice = Some("passkey.removed");
                }
                Err(PasskeyError::Store(e)) => return PasskeyAnswer::Mfa(store_failed(e)),
                Err(e) => {
                    tracing::warn!(reason = e.reason(), tenant = %tenant, connection = %connection, "passkey removal refused");
                    error = Some(e.reason());
                }
            },
        }
        let passkeys = match pk.list(&tenant, &sub).await {
            Ok(l) => l.iter().map(Listed::from).collect(),
            Err(e) => return PasskeyAnswer::Mfa(store_failed(e)),
        };
        let started = match pk
            .start_registration(&tenant, &sub, &connection, &who, None, browser)
            .await
        {
            Ok(s) => Some(s),
            // At the limit: the list is shown without the add form.
            Err(PasskeyError::TooMany) => None,
            Err(PasskeyError::Store(e)) => return PasskeyAnswer::Mfa(store_failed(e)),
            Err(e) => {
                error = error.or(Some(e.reason()));
                None
            }
        };
        let (ceremony, options) = started.map(|s| (s.handle, s.options)).unwrap_or_default();
        let status = match error {
            None => 200,
            Some("passkey.not_found") => 404,
            Some(_) => 400,
        };
        PasskeyAnswer::Page(PasskeyPage {
            status,
            tenant,
            connection: None,
            tenant_name,
            who,
            mode: Mode::Register,
            ceremony,
            options,
            mfa_handle: String::new(),
            app: String::new(),
            error,
            notice,
            passkeys,
        })
    }

    /// The signed-in user of `tenant` in this browser, on a connection with
    /// Portcullis's own factors, where the tenant uses them: (tenant,
    /// connection, sub, who, tenant name).
    async fn signed_in_own_factor(
        &self,
        tenant: &str,
        sso: &BrowserSso,
    ) -> Result<(TenantId, ConnectionId, String, String, String), MfaAnswer> {
        let not_signed_in = || {
            tracing::info!(
                reason = "passkey.not_signed_in",
                tenant,
                "passkeys page without a session"
            );
            refused(
                401,
                "Sign in to the application first, then come back to manage your passkeys.",
                "passkey.not_signed_in",
            )
        };
        let Ok(t) = TenantId::parse(tenant) else {
            return Err(not_signed_in());
        };
        let Some(s) = super::session::load(&self.store, sso, &t).await.map_err(store_failed)? else {
            return Err(not_signed_in());
        };
        match self.provider.directory.active(&t, &s.sub).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(not_signed_in()),
            Err(e) => return Err(store_failed(e)),
        }
        let (tenant_record, conn) = (
            self.tenants.get(&t).await.map_err(store_failed)?,
            match self.tenants.connection(&t, &s.connection).await {
                Ok(c) => c,
                Err(crate::tenant::RegistryError::Store(e)) => return Err(store_failed(e)),
                Err(_) => None,
            },
        );
        let applies = match (&tenant_record, &conn) {
            (Some(tr), Some(c)) => tr.settings.local_mfa != LocalMfa::Off && own_factor(&c.kind),
            _ => false,
        };
        if !applies {
            tracing::info!(reason = "passkey.not_applicable", tenant = %t, connection = %s.connection);
            return Err(refused(
                403,
                "Passkeys by Portcullis are not used for your sign-in method.",
                "passkey.not_applicable",
            ));
        }
        // Passkeys are listed, added and removed only from a recent
        // sign-in, and from a session that used a second factor once the
        // account has one.
        self.may_change_factors(&t, &s).await?;
        let who = match self.provider.directory.get(&t, &s.sub).await {
            Ok(u) => u.and_then(|u| u.email).unwrap_or_else(|| s.sub.clone()),
            Err(e) => return Err(store_failed(e)),
        };
        let tenant_name = tenant_record.map_or_else(|| t.to_string(), |r| r.name.clone());
        Ok((t, s.connection, s.sub, who, tenant_name))
    }
}
