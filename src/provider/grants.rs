//! The token endpoint's grants and the token-consuming endpoints:
//! minting ID and access tokens, userinfo, revocation (RFC 7009) and
//! introspection (RFC 7662).

use super::clients::{Client, GrantType};
use super::codes::{Authorization, Issued, Redeemed};
use super::refresh::{Family, Rotation, Start};
use super::scopes::{invalid_target, Grant, Subject};
use super::{OAuthError, OAuthErrorCode, Provider};
use crate::directory::{Inactive, User};
use crate::ids::TenantId;
use crate::secret::Redacted;
use crate::store::{Key, StoreError};
use crate::tenant::FreshTenant;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// An app's record the edge read while it served this request (alongside
/// the rate limiter's work, one store wait for all), for the client id
/// the request names, and for a refresh request the family its token
/// belongs to. Only reads: the handler still authenticates the client
/// before it uses either.
#[derive(Clone, Debug)]
pub struct PrefetchedClient {
    /// The client id the request named.
    pub id: String,
    /// Its record as read, `None` when no such app exists.
    pub client: Option<Arc<Client>>,
    /// The refresh token the request named and its family as
    /// [`Provider::peek_refresh`] read it (`None` inside: not current).
    pub refresh: Option<(String, Option<Family>)>,
    /// The authorization code the request named and what it grants as
    /// [`Provider::peek_code`] read it (`None` inside: not there).
    pub code: Option<(String, Option<Authorization>)>,
}

/// What a token request's grant had read ahead, nothing consumed: the
/// refresh token's family (`Some`: peeked; `None` inside: not current) or
/// what the code grants (`Some`: found).
#[derive(Default)]
struct Peeked {
    family: Option<Option<Family>>,
    code: Option<Authorization>,
}

/// What [`Provider::code_grant_reads`] answers: the liveness reads, the
/// pre-token hook, the refresh family's start (`None`: not wanted), and,
/// when no family is started (whose start looks for it), whether the SSO
/// session has ended (`None`: the start looked).
type CodeGrantReads = (
    Result<Liveness, StoreError>,
    Result<Option<crate::hooks::HookConfig>, OAuthError>,
    Option<Result<Start, StoreError>>,
    Option<Result<bool, StoreError>>,
);

/// How the client authenticated at the token endpoint. `Debug` redacts
/// the secret.
#[derive(Clone)]
pub enum ClientCredentials {
    /// `client_secret_basic` or `client_secret_post`.
    Secret {
        /// The client id.
        id: String,
        /// The presented secret.
        secret: String,
    },
    /// A public client (`none`): only the id.
    Public {
        /// The client id.
        id: String,
    },
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { id, .. } => f
                .debug_struct("Secret")
                .field("id", id)
                .field("secret", &Redacted)
                .finish(),
            Self::Public { id } => f.debug_struct("Public").field("id", id).finish(),
        }
    }
}

/// A token request, parsed from the form. `Debug` redacts the code, the
/// verifier and every token.
#[derive(Clone, Default, Deserialize)]
pub struct TokenRequest {
    /// `authorization_code`, `refresh_token` or `client_credentials`.
    pub grant_type: Option<String>,
    /// The code.
    pub code: Option<String>,
    /// The redirect URI used at `/authorize`.
    pub redirect_uri: Option<String>,
    /// The PKCE verifier.
    pub code_verifier: Option<String>,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// A narrower scope on refresh; the scope wanted by `client_credentials`.
    pub scope: Option<String>,
    /// RFC 8707 `resource`: the API the access token is for.
    pub resource: Option<String>,
    /// RFC 8693 `subject_token` (token exchange).
    pub subject_token: Option<String>,
    /// RFC 8693 `subject_token_type`.
    pub subject_token_type: Option<String>,
    /// RFC 8693 `requested_token_type`.
    pub requested_token_type: Option<String>,
    /// RFC 8693 `audience` (the same as `resource` here).
    pub audience: Option<String>,
    /// RFC 8693 `actor_token` (not supported: refused).
    pub actor_token: Option<String>,
    /// RFC 8693 `actor_token_type` (not supported: refused).
    pub actor_token_type: Option<String>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("grant_type", &self.grant_type)
            .field("code", &Redacted::of(&self.code))
            .field("redirect_uri", &self.redirect_uri)
            .field("code_verifier", &Redacted::of(&self.code_verifier))
            .field("refresh_token", &Redacted::of(&self.refresh_token))
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .field("subject_token", &Redacted::of(&self.subject_token))
            .field("subject_token_type", &self.subject_token_type)
            .field("requested_token_type", &self.requested_token_type)
            .field("audience", &self.audience)
            .field("actor_token", &Redacted::of(&self.actor_token))
            .field("actor_token_type", &self.actor_token_type)
            .finish()
    }
}

/// A successful token response (RFC 6749 §5.1). `Debug` redacts the tokens.
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    /// The access token (an RFC 9068 JWT).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Lifetime of the access token, seconds.
    pub expires_in: u64,
    /// The ID token (not for `client_credentials`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The next refresh token (only with `offline_access`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Granted scope (RFC 6749 §3.3: may be narrower than requested).
    pub scope: String,
    /// RFC 8693 `issued_token_type` (token exchange only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &Redacted)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("id_token", &Redacted::of(&self.id_token))
            .field("refresh_token", &Redacted::of(&self.refresh_token))
            .field("scope", &self.scope)
            .field("issued_token_type", &self.issued_token_type)
            .finish()
    }
}

/// Claims of an access token (RFC 9068).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user, or the client id for `client_credentials`.
    pub sub: String,
    /// Audience: the resource server, or the client id when there is none.
    pub aud: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The user's tenant (absent for `client_credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Authentication time (absent for `client_credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// SSO session id (absent for `client_credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// An exchanged token (RFC 8693): the `jti` of the subject token it was
    /// exchanged for, then those that token was itself exchanged for
    /// (at most [`super::exchange::MAX_EXCHANGE_DEPTH`]). Revoking any of
    /// them refuses this token too (`token.subject_revoked`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_jti: Vec<String>,
    /// The refresh-token family the token was minted with (code grant and
    /// refresh), as a digest of its id ([`family_claim`]); an exchanged
    /// token carries its subject token's. Revoking the family refuses the
    /// token on use (`token.family_revoked`): an access token never
    /// outlives the family it came with (RFC 6749 §4.1.2, RFC 7009 §2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

/// The `fam` claim of an access token minted with the refresh family
/// `family`: a digest, so the token names the family without carrying a
/// part of its refresh tokens.
pub(crate) fn family_claim(family: &str) -> String {
    crate::tokens::sha256_base64url(family.as_bytes())
}

fn pkce_ok(challenge: &str, verifier: &str) -> bool {
    use subtle::ConstantTimeEq;
    let valid_chars = verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    (43..=128).contains(&verifier.len())
        && valid_chars
        && crate::tokens::sha256_base64url(verifier.as_bytes())
            .as_bytes()
            .ct_eq(challenge.as_bytes())
            .into()
}

impl Provider {
    /// Authenticates the client at the token, revocation or introspection endpoint.
    pub async fn authenticate_client(&self, creds: &ClientCredentials) -> Result<Arc<Client>, OAuthError> {
        self.authenticate_prefetched(creds, None).await
    }

    /// [`Self::authenticate_client`], with the app's record the edge read
    /// for this request when it names the same client id (no second read).
    pub async fn authenticate_prefetched(
        &self,
        creds: &ClientCredentials,
        prefetched: Option<PrefetchedClient>,
    ) -> Result<Arc<Client>, OAuthError> {
        let id = match creds {
            ClientCredentials::Secret { id, .. } | ClientCredentials::Public { id } => id,
        };
        let record = match prefetched.filter(|p| p.id == *id) {
            Some(p) => p.client,
            None => self.clients.get(id).await?,
        };
        let Some(client) = record else {
            return Err(OAuthError::invalid_client("client.unknown", "Unknown client."));
        };
        match creds {
            ClientCredentials::Secret { secret, .. } if client.secret_matches(secret, self.clock.now()) => Ok(client),
            ClientCredentials::Secret { .. } => Err(OAuthError::invalid_client(
                "client.bad_secret",
                "Client authentication failed.",
            )),
            ClientCredentials::Public { .. } if client.is_public() => Ok(client),
            ClientCredentials::Public { .. } => Err(OAuthError::invalid_client(
                "client.secret_required",
                "This client must authenticate with its secret.",
            )),
        }
    }

    /// The token endpoint.
    pub async fn token(&self, client: &Client, req: &TokenRequest) -> Result<TokenResponse, OAuthError> {
        self.token_with(client, req, None).await
    }

    /// [`Self::token`], with the tenant record the edge read while serving
    /// this request (used for the grant's tenant checks when it is that
    /// tenant's, instead of reading the tenant again).
    pub async fn token_with(
        &self,
        client: &Client,
        req: &TokenRequest,
        fresh: Option<&FreshTenant>,
    ) -> Result<TokenResponse, OAuthError> {
        self.token_peeked(client, req, fresh, Peeked::default()).await
    }

    /// The token endpoint from the client's credentials: authenticates the
    /// client, then serves [`Self::token_with`]. A refresh request's family
    /// is peeked (a read, nothing changes) while the client is
    /// authenticated: one store wait for both, none when the edge already
    /// read both for this token. Nothing of it is used, or told, unless the
    /// client authenticates first.
    pub async fn token_for(
        &self,
        creds: &ClientCredentials,
        req: &TokenRequest,
        fresh: Option<&FreshTenant>,
        mut prefetched: Option<PrefetchedClient>,
    ) -> Result<TokenResponse, OAuthError> {
        let refresh_token = req
            .refresh_token
            .as_deref()
            .filter(|_| req.grant_type.as_deref() == Some(GrantType::RefreshToken.as_str()));
        let read_at_edge = prefetched
            .as_mut()
            .and_then(|p| p.refresh.take())
            .filter(|(t, _)| refresh_token == Some(t.as_str()))
            .map(|(_, family)| family);
        let code = req
            .code
            .as_deref()
            .filter(|_| req.grant_type.as_deref() == Some(GrantType::AuthorizationCode.as_str()));
        let code_at_edge = prefetched
            .as_mut()
            .and_then(|p| p.code.take())
            .filter(|(c, _)| code == Some(c.as_str()))
            .map(|(_, authz)| authz);
        let peek = async {
            match (refresh_token, read_at_edge) {
                (Some(_), Some(family)) => Some(Ok(family)),
                (Some(t), None) => Some(self.peek_refresh(t).await),
                (None, _) => None,
            }
        };
        // A code is only peeked here too: what it grants lets the grant
        // send the code's take together with the reads that follow it.
        let peek_code = async {
            match (code, code_at_edge) {
                (Some(_), Some(authz)) => Some(authz),
                // A failed read only costs the grant its early reads.
                (Some(c), None) => self.peek_code(c).await.ok(),
                (None, _) => None,
            }
        };
        let (client, peeked, code_peeked) =
            tokio::join!(self.authenticate_prefetched(creds, prefetched), peek, peek_code);
        let client = client?;
        let peeked = peeked.transpose()?;
        self.token_peeked(
            &client,
            req,
            fresh,
            Peeked {
                family: peeked,
                code: code_peeked.flatten(),
            },
        )
        .await
    }

    /// [`Self::token_with`], with the refresh family already peeked for
    /// this request's refresh token (`Some`), or to be peeked (`None`).
    async fn token_peeked(
        &self,
        client: &Client,
        req: &TokenRequest,
        fresh: Option<&FreshTenant>,
        peeked: Peeked,
    ) -> Result<TokenResponse, OAuthError> {
        let grant = match req.grant_type.as_deref() {
            Some(g) => GrantType::parse(g)
                .ok_or_else(|| OAuthError::unsupported_grant_type("This grant_type is not supported."))?,
            None => {
                return Err(OAuthError::invalid_request(
                    "token.missing_grant_type",
                    "grant_type is required.",
                ))
            }
        };
        if grant == GrantType::ClientCredentials && client.is_public() {
            // RFC 6749 §4.4: only confidential clients.
            return Err(OAuthError::unauthorized_client(
                "client_credentials.public_client",
                "client_credentials is for confidential clients only.",
            ));
        }
        if grant == GrantType::TokenExchange && client.is_public() {
            // RFC 8693 §5: an unauthenticated client could exchange any
            // token it came by; refused also for records stored before
            // registration refused public apps this grant.
            return Err(OAuthError::unauthorized_client(
                "token_exchange.public_client",
                "token exchange is for confidential clients only.",
            ));
        }
        if !client.allows_grant(grant) {
            return Err(OAuthError::unauthorized_client(
                "token.grant_not_allowed",
                format!("This client may not use grant_type {}.", grant.as_str()),
            ));
        }
        let issued = match grant {
            GrantType::AuthorizationCode => self.code_grant(client, req, fresh, peeked.code).await,
            GrantType::RefreshToken => self.refresh_grant(client, req, fresh, peeked.family).await,
            GrantType::ClientCredentials => self.client_credentials_grant(client, req).await,
            GrantType::TokenExchange => self.exchange_grant(client, req).await,
        };
        if issued.is_ok() {
            crate::meter::token_issued(grant.as_str());
            if grant == GrantType::RefreshToken {
                crate::meter::refresh_succeeded();
            }
        }
        issued
    }

    /// RFC 8707 §2.2: a `resource` at the token endpoint must be the one the
    /// authorization was granted for (one resource per grant).
    fn check_token_resource(authz: &Authorization, req: &TokenRequest) -> Result<(), OAuthError> {
        match &req.resource {
            Some(r) if authz.resource.as_deref() != Some(r.as_str()) => Err(invalid_target(
                "resource.not_granted",
                "The resource is not the one this grant is for.",
            )),
            _ => Ok(()),
        }
    }

    /// `client_credentials` (RFC 6749 §4.4): an access token for the app
    /// itself; no ID token, no refresh token.
    async fn client_credentials_grant(&self, client: &Client, req: &TokenRequest) -> Result<TokenResponse, OAuthError> {
        let requested: Vec<String> = match &req.scope {
            Some(s) => s.split_whitespace().map(str::to_owned).collect(),
            // RFC 6749 §3.3: without a scope, the pre-defined default is every scope the app is allowed.
            None => client.allowed_scopes.clone(),
        };
        let grant = self
            .grant_scopes(client, &requested, req.resource.as_deref(), Subject::App)
            .await?;
        if grant.scope.is_empty() {
            return Err(OAuthError::invalid_scope(
                "client_credentials.no_scope",
                "None of the requested scopes can be granted to this client for this resource.",
            ));
        }
        let now = self.clock.unix();
        let at_ttl = self.ttl.access_token_ttl_secs;
        let scope = grant.scope.join(" ");
        let access = AccessClaims {
            iss: self.iss(),
            sub: client.client_id.clone(),
            aud: grant.resource.clone().unwrap_or_else(|| client.client_id.clone()),
            exp: now + i64::try_from(at_ttl).unwrap_or(3600),
            iat: now,
            jti: crate::tokens::random_token(16),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            tenant: None,
            auth_time: None,
            sid: None,
            subject_jti: Vec::new(),
            fam: None,
        };
        let access_token = self.keys.signer().await?.sign("at+jwt", &access)?;
        tracing::info!(reason = "client_credentials.issued", client_id = %client.client_id, aud = %access.aud);
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: at_ttl,
            id_token: None,
            refresh_token: None,
            scope,
            issued_token_type: None,
        })
    }

    async fn code_grant(
        &self,
        client: &Client,
        req: &TokenRequest,
        fresh: Option<&FreshTenant>,
        peeked: Option<Authorization>,
    ) -> Result<TokenResponse, OAuthError> {
        let code = req
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("token.missing_code", "code is required."))?;
        // What this redemption will issue is named before the code is
        // taken, in its "used" marker, so a replay from the take on can
        // revoke it whether or not it exists yet (see `codes`).
        let minting = Minting {
            jti: crate::tokens::random_token(16),
            now: self.clock.unix(),
        };
        let family_id = Self::new_family_id();
        let will_issue = Issued {
            family: Some(family_id.clone()),
            jti: Some(minting.jti.clone()),
            exp: access_exp(minting.now, self.ttl.access_token_ttl_secs),
            pending: false,
        };
        // With the code peeked (read, not consumed) and every check that
        // needs no read passing on what it grants, its take goes out in the
        // same wait as the reads and the family start that follow it; they
        // are used only if the take answers that very authorization, and
        // the family is abandoned otherwise (`docs/performance-log.md`,
        // thirty-ninth pass). Otherwise the code is taken first, as a
        // redemption the app got wrong must consume it too.
        let ahead = peeked.filter(|a| Self::code_checks(client, a, req).is_ok());
        let (redeemed, early) = match ahead {
            Some(p) => {
                let (redeemed, reads) = tokio::join!(
                    self.redeem_code(code, &will_issue),
                    self.code_grant_reads(client, &p, fresh, &family_id)
                );
                (redeemed, Some((p, reads)))
            }
            None => (self.redeem_code(code, &will_issue).await, None),
        };
        let authz = match redeemed {
            Ok(Redeemed::Fresh(a)) => *a,
            other => {
                if let Some((p, reads)) = &early {
                    self.abandon_early(p, &family_id, reads).await;
                }
                return Err(self.code_not_redeemed(client, code, other).await);
            }
        };
        crate::telemetry::tag_span(authz.tenant.as_str(), Some(authz.connection.as_str()));
        let reads = match early {
            // Checked and read for exactly what was taken.
            Some((p, reads)) if p == authz => reads,
            Some((p, reads)) => {
                // A code's authorization is written once and its name is
                // random, so this cannot happen; refused all the same.
                tracing::warn!(
                    reason = "code.changed_since_peeked",
                    "the code taken is not the one peeked"
                );
                self.abandon_early(&p, &family_id, &reads).await;
                return Err(OAuthError::invalid_grant(
                    "code.unknown",
                    "The authorization code is invalid or expired.",
                ));
            }
            None => {
                Self::code_checks(client, &authz, req)?;
                self.code_grant_reads(client, &authz, fresh, &family_id).await
            }
        };
        let (live, hook, started, ended) = reads;
        // The first token of the family, once it is certain it started.
        let first_token = match &started {
            Some(Ok(Start {
                started: Some((_, token)),
                ..
            })) => Some(token.clone()),
            _ => None,
        };
        let wants = started.is_some();
        let granted = self
            .code_grant_checked(client, &authz, live, hook, started, ended, &minting)
            .await;
        if granted.is_err() && wants {
            // Whatever of the family was written (all, some or none).
            self.abandon_family(&authz, &family_id, first_token.as_deref()).await;
        }
        granted
    }

    /// The checks of a code redemption that need no read, on what the code
    /// grants: the app, its tenant, `redirect_uri`, PKCE, the resource. They
    /// come first, so a redemption the app got wrong costs no other read.
    fn code_checks(client: &Client, authz: &Authorization, req: &TokenRequest) -> Result<(), OAuthError> {
        if authz.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "code.wrong_client",
                "The code was issued to another client.",
            ));
        }
        if authz
            .client_registered_at
            .is_some_and(|at| at != client.created_at.timestamp_millis())
        {
            return Err(OAuthError::invalid_grant(
                "code.client_superseded",
                "The application was registered again since this code was issued.",
            ));
        }
        if !client.allows_tenant(&authz.tenant) {
            return Err(OAuthError::invalid_grant(
                "code.tenant_not_allowed",
                "This client may not sign in users of that tenant.",
            ));
        }
        if req.redirect_uri.as_deref() != Some(authz.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant(
                "code.redirect_uri_mismatch",
                "redirect_uri does not match the authorization request.",
            ));
        }
        match (&authz.code_challenge, req.code_verifier.as_deref()) {
            (Some(ch), Some(v)) if pkce_ok(ch, v) => {}
            (Some(_), Some(_)) => {
                return Err(OAuthError::invalid_grant(
                    "pkce.mismatch",
                    "code_verifier does not match the challenge.",
                ))
            }
            (Some(_), None) => {
                return Err(OAuthError::invalid_grant(
                    "pkce.missing_verifier",
                    "code_verifier is required.",
                ))
            }
            (None, Some(_)) => {
                return Err(OAuthError::invalid_grant(
                    "pkce.unexpected_verifier",
                    "code_verifier given but the authorization request had no code_challenge.",
                ))
            }
            (None, None) if client.is_public() => {
                return Err(OAuthError::invalid_grant(
                    "pkce.required",
                    "PKCE is required for public clients.",
                ))
            }
            (None, None) => {}
        }
        Self::check_token_resource(authz, req)
    }

    /// What a code redemption reads once the code's checks have passed, in
    /// one wait: the user, its tenant and connection may have gone since
    /// the sign-in (one read of the tenant serves both this and its
    /// `allowed_clients`; the user read here is the one the ID token is
    /// minted from), the pre-token hook, the refresh family's start, and
    /// whether the SSO session the code came from has ended (sign-out:
    /// `code.session_ended`), which the family's start looks for in the
    /// script that lists it under the session, else one `EXISTS`.
    /// The family is written ahead of the liveness checks, its token handed
    /// out only once every check has passed, and abandoned (deleted with
    /// its index entries and its token) when any refuses the redemption,
    /// so nothing of a redemption that fails stays behind but what is
    /// inert: a family whose token nobody holds (`docs/performance-log.md`,
    /// thirty-sixth pass).
    async fn code_grant_reads(
        &self,
        client: &Client,
        authz: &Authorization,
        fresh: Option<&FreshTenant>,
        family_id: &str,
    ) -> CodeGrantReads {
        let known = FreshTenant::for_id(fresh, &authz.tenant);
        let wants = wants_refresh(client, authz);
        tokio::join!(
            self.directory
                .active_at(&authz.tenant, &authz.sub, &authz.connection, known),
            self.pre_token_hook(authz),
            async {
                match wants {
                    true => Some(self.start_family(authz, family_id.to_owned()).await),
                    false => None,
                }
            },
            async {
                match wants {
                    true => None,
                    false => Some(self.session_ended(&authz.tenant, &authz.sid).await),
                }
            }
        )
    }

    /// Undoes the family a redemption started beside its take, when the
    /// take did not answer the authorization it was started for.
    async fn abandon_early(&self, authz: &Authorization, family_id: &str, reads: &CodeGrantReads) {
        let first_token = match &reads.2 {
            // Not wanted: nothing was started.
            None => return,
            Some(Ok(Start {
                started: Some((_, token)),
                ..
            })) => Some(token.as_str()),
            Some(_) => None,
        };
        self.abandon_family(authz, family_id, first_token).await;
    }

    /// The refusal of a redemption whose take found no fresh code: a reuse
    /// revokes what the first redemption issued.
    async fn code_not_redeemed(
        &self,
        client: &Client,
        code: &str,
        redeemed: Result<Redeemed, StoreError>,
    ) -> OAuthError {
        match redeemed {
            Err(e) => e.into(),
            Ok(Redeemed::Reused(issued)) => {
                if let Some(t) = code.split_once('.').and_then(|(t, _)| TenantId::parse(t).ok()) {
                    // Revoke what the first redemption named; a marker an
                    // earlier version left pending is flagged, then read
                    // again (see `codes`).
                    let recorded = if issued.pending {
                        match self.record_code_replay(code, &t).await {
                            Ok(r) => r,
                            Err(e) => return e.into(),
                        }
                    } else {
                        None
                    };
                    for i in [Some(issued), recorded].into_iter().flatten() {
                        if let Err(e) = self.revoke_issued(&t, &i).await {
                            return e;
                        }
                    }
                    // The code was real (its marker exists), so is its tenant.
                    self.audit.security(code_reuse_event(&client.client_id, &t)).await;
                }
                tracing::warn!(
                    reason = "code.reused",
                    client_id = %client.client_id,
                    "authorization code presented twice; its tokens revoked"
                );
                OAuthError::invalid_grant("code.reused", "The authorization code was already used.")
            }
            Ok(Redeemed::Unknown | Redeemed::Fresh(_)) => {
                OAuthError::invalid_grant("code.unknown", "The authorization code is invalid or expired.")
            }
        }
    }

    /// The rest of a code grant once its reads are in: the liveness
    /// decision, the SSO session's end, the pre-token hook, the family's
    /// start, the tokens.
    #[allow(clippy::too_many_arguments)]
    async fn code_grant_checked(
        &self,
        client: &Client,
        authz: &Authorization,
        live: Result<Liveness, StoreError>,
        hook: Result<Option<crate::hooks::HookConfig>, OAuthError>,
        started: Option<Result<Start, StoreError>>,
        ended: Option<Result<bool, StoreError>>,
        minting: &Minting,
    ) -> Result<TokenResponse, OAuthError> {
        let (tenant_record, active) = live?;
        let hook = hook?;
        if !tenant_allows_client(tenant_record.as_deref(), &client.client_id) {
            return Err(OAuthError::invalid_grant(
                "code.client_not_allowed_by_tenant",
                "The organization does not use this application.",
            ));
        }
        let user = match active {
            Ok(u) => u,
            Err(why) => {
                let reason = match why {
                    Inactive::TenantGone => "code.tenant_gone",
                    Inactive::ConnectionGone => "code.connection_gone",
                    Inactive::UserGone => "code.user_gone",
                    Inactive::UserDisabled => "code.user_disabled",
                    Inactive::Superseded => "code.user_superseded",
                };
                return Err(OAuthError::invalid_grant(reason, inactive_description(why)));
            }
        };
        if credentials_reset_since(&user, authz.auth_time) {
            tracing::info!(reason = "code.credentials_reset", tenant = %authz.tenant, client_id = %client.client_id);
            return Err(OAuthError::invalid_grant("code.credentials_reset", CREDENTIALS_RESET));
        }
        // Signed out (or its sessions ended) since the code was issued: the
        // code ended with the session, and starts nothing that outlives it.
        let session_ended = match (&started, ended) {
            (Some(Ok(start)), _) => start.session_ended,
            // The start's failure is answered below.
            (Some(Err(_)), _) | (None, None) => false,
            (None, Some(ended)) => ended?,
        };
        if session_ended {
            return Err(Self::session_ended_refusal(client, authz));
        }
        // The hook runs (and may fail) before anything is handed out.
        let hooked = hook.is_some();
        // The family this redemption started (if it wanted one and it did).
        let family = match &started {
            Some(Ok(Start {
                started: Some((family, _)),
                ..
            })) => Some(family.id.as_str()),
            _ => None,
        };
        let prepared = self
            .prepare(client, authz, true, Some(&user), Some(hook), Some(minting), family)
            .await?;
        let refresh = match started {
            None => None,
            Some(started) => match started?.started {
                // A hook's call takes long enough for a replay to arrive
                // meanwhile and delete the family (see `codes`): it is
                // looked for again after the call, so such a redemption
                // fails as the replay's did instead of answering dead tokens.
                Some((family, token)) if !hooked || self.family_exists(&authz.tenant, &family.id).await? => Some(token),
                _ => {
                    // The session's end forbade or deleted the family it
                    // found listed (the sign-out came after the listing).
                    if self.session_ended(&authz.tenant, &authz.sid).await? {
                        return Err(Self::session_ended_refusal(client, authz));
                    }
                    // A replay arrived while we were redeeming and forbade
                    // the family before it started, or deleted it since
                    // (and denied the access token's `jti`); the replay
                    // was audited where it arrived.
                    tracing::warn!(
                        reason = "code.reused",
                        tenant = %authz.tenant,
                        client_id = %client.client_id,
                        "authorization code replayed during its redemption; no tokens issued"
                    );
                    return Err(OAuthError::invalid_grant(
                        "code.reused",
                        "The authorization code was already used.",
                    ));
                }
            },
        };
        let (resp, _) = Self::sign(prepared, refresh)?;
        Ok(resp)
    }

    /// The refusal of a code whose SSO session ended before it was
    /// redeemed (sign-out, or the user's sessions ended).
    fn session_ended_refusal(client: &Client, authz: &Authorization) -> OAuthError {
        tracing::info!(reason = "code.session_ended", tenant = %authz.tenant, client_id = %client.client_id);
        OAuthError::invalid_grant(
            "code.session_ended",
            "The sign-in this code came from has ended; sign in again.",
        )
    }

    async fn refresh_grant(
        &self,
        client: &Client,
        req: &TokenRequest,
        fresh: Option<&FreshTenant>,
        peeked: Option<Option<Family>>,
    ) -> Result<TokenResponse, OAuthError> {
        let token = req
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("token.missing_refresh_token", "refresh_token is required."))?;
        // Everything that can fail for reasons outside the app's control
        // (the IdP's answer, the liveness checks, the pre-token hook) runs on
        // the family as peeked, read-only, before the token is consumed: a
        // failure there leaves the app its refresh token. Tokens that are not
        // current, or of another client, are left to the rotation to refuse.
        let peeked = match peeked {
            Some(p) => p,
            None => self.peek_refresh(token).await?,
        }
        .filter(|f| f.authz.client_id == client.client_id);
        let prepared = match &peeked {
            Some(family) => Some(self.prepare_refresh(client, req, family, fresh).await?),
            None => None,
        };
        // A peeked family rotates in one step (the family's presence, the
        // take and the next token in one script); anything else takes the
        // general path, which finds reuses of tokens already rotated.
        let rotation = match &peeked {
            Some(family) => self.rotate_peeked(token, family, &client.client_id).await?,
            None => self.rotate_refresh(token, &client.client_id).await?,
        };
        let (family, next) = match rotation {
            Rotation::Rotated(f, n) => (f, n),
            Rotation::WrongClient => {
                return Err(OAuthError::invalid_grant(
                    "refresh.wrong_client",
                    "The refresh token was issued to another client.",
                ))
            }
            Rotation::Reused => {
                return Err(OAuthError::invalid_grant(
                    "refresh.reused",
                    "The refresh token was already used; its session has been revoked.",
                ))
            }
            Rotation::Invalid => {
                return Err(OAuthError::invalid_grant(
                    "refresh.unknown",
                    "The refresh token is invalid, expired or revoked.",
                ))
            }
        };
        // The rotated family must be the one prepared for; anything else
        // (a race with a revocation and a new family cannot produce it, but
        // fail closed) is refused as an unknown token.
        match (peeked, prepared) {
            (Some(p), Some(prepared)) if p.id == family.id && p.started_at == family.started_at => {
                Ok(Self::sign(prepared, Some(next))?.0)
            }
            _ => {
                tracing::warn!(
                    reason = "refresh.unknown",
                    tenant = %family.authz.tenant,
                    client_id = %client.client_id,
                    "refresh token rotated without a prepared family; refused"
                );
                Err(OAuthError::invalid_grant(
                    "refresh.unknown",
                    "The refresh token is invalid, expired or revoked.",
                ))
            }
        }
    }

    /// Checks a refresh of `family` as asked by `req` and prepares its
    /// tokens (see [`Provider::prepare`]), without consuming anything; a
    /// family whose user, app or tenant no longer allows it is revoked.
    async fn prepare_refresh(
        &self,
        client: &Client,
        req: &TokenRequest,
        family: &Family,
        fresh: Option<&FreshTenant>,
    ) -> Result<Prepared, OAuthError> {
        let mut authz = family.authz.clone();
        crate::telemetry::tag_span(authz.tenant.as_str(), Some(authz.connection.as_str()));
        Self::check_token_resource(&authz, req)?;
        if let Some(scope) = &req.scope {
            let asked: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
            if asked.iter().any(|s| !authz.scope.contains(s)) {
                return Err(OAuthError::invalid_scope(
                    "refresh.scope_widened",
                    "scope exceeds the original grant.",
                ));
            }
            authz.scope = asked;
        }
        // Everything the family came from must still be there, as the same
        // incarnation; otherwise the family dies with it.
        // config: the pre-token hook is looked up with the liveness reads (one wait).
        let (allowed, hook) = tokio::try_join!(
            self.refresh_still_allowed(client, family, fresh),
            self.pre_token_hook(&authz)
        )?;
        let user = match allowed {
            Ok(user) => user,
            Err((reason, description)) => {
                tracing::warn!(reason, tenant = %authz.tenant, client_id = %client.client_id, "refresh refused; family revoked");
                self.revoke_family(&authz.tenant, &family.id).await?;
                return Err(OAuthError::invalid_grant(reason, description));
            }
        };
        // Does the IdP still vouch for the person? (provider/upstream.rs)
        // Asked only once the family is known to be live: the user, its
        // connection and tenant as the same incarnations. The IdP's token is
        // never sent through a connection deleted and created again under
        // the same id (its clean-up may not have run), nor for a user the
        // gateway disabled, nor for an app that may no longer serve the
        // tenant. Same number of waits as before: it moved from before the
        // liveness reads to after them.
        self.check_upstream(family).await?;
        let with_id = authz.scope.iter().any(|s| s == "openid");
        self.prepare(client, &authz, with_id, Some(&user), Some(hook), None, Some(&family.id))
            .await
    }

    /// Whether a refresh of `family` may still be served: the user is active
    /// (exists, enabled, same incarnations of tenant and connection), signs
    /// in through the same connection, the app may still serve the tenant,
    /// and the app is the one the family was started for (not a
    /// re-registration of a deleted app with the same id).
    /// Answers the user (read here) when it may.
    async fn refresh_still_allowed(
        &self,
        client: &Client,
        family: &Family,
        fresh: Option<&FreshTenant>,
    ) -> Result<Result<User, (&'static str, &'static str)>, OAuthError> {
        let authz = &family.authz;
        // Independent reads, sent together; the tenant record read for the
        // liveness check also answers its `allowed_clients`.
        let (retired_at, (tenant_record, active)) = tokio::try_join!(
            self.client_retired_at(&client.client_id),
            self.directory.active_at(
                &authz.tenant,
                &authz.sub,
                &authz.connection,
                FreshTenant::for_id(fresh, &authz.tenant)
            )
        )?;
        if retired_at.is_some_and(|at| family.started_at <= at) {
            return Ok(Err((
                "refresh.client_superseded",
                "The application was registered again since this token was issued.",
            )));
        }
        if !client.allows_tenant(&authz.tenant) {
            return Ok(Err((
                "refresh.tenant_not_allowed",
                "The application may no longer serve this organization.",
            )));
        }
        if !tenant_allows_client(tenant_record.as_deref(), &client.client_id) {
            return Ok(Err((
                "refresh.client_not_allowed_by_tenant",
                "The organization no longer uses this application.",
            )));
        }
        let user = match active {
            Ok(u) => u,
            Err(why) => {
                let reason = match why {
                    Inactive::TenantGone => "refresh.tenant_gone",
                    Inactive::ConnectionGone => "refresh.connection_gone",
                    Inactive::UserGone => "refresh.user_gone",
                    Inactive::UserDisabled => "refresh.user_disabled",
                    Inactive::Superseded => "refresh.user_superseded",
                };
                return Ok(Err((reason, inactive_description(why))));
            }
        };
        if user.connection != authz.connection {
            return Ok(Err((
                "refresh.user_superseded",
                inactive_description(Inactive::Superseded),
            )));
        }
        if credentials_reset_since(&user, authz.auth_time) {
            return Ok(Err(("refresh.credentials_reset", CREDENTIALS_RESET)));
        }
        Ok(Ok(user))
    }

    /// Revokes what one code redemption issued.
    async fn revoke_issued(&self, tenant: &TenantId, issued: &Issued) -> Result<(), OAuthError> {
        if let Some(f) = &issued.family {
            // Named before it started: it may start after this.
            self.forbid_family(tenant, f).await?;
        }
        if let Some(jti) = &issued.jti {
            self.revoke_jti(tenant, jti, issued.exp).await?;
        }
        Ok(())
    }

    /// Everything of a mint that can fail for reasons outside the app's
    /// control (the grant decision, the user read, the pre-token hook, the
    /// signing key snapshot), done before anything single-use is consumed
    /// or started, so such a failure costs the app nothing.
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &self,
        client: &Client,
        authz: &Authorization,
        with_id_token: bool,
        // The user as read (and found active) in this request, if it was.
        user: Option<&User>,
        // The tenant's pre-token hook as looked up in this request, if it was.
        hook: Option<Option<crate::hooks::HookConfig>>,
        // The access token's `jti` and issue time, if named before.
        minting: Option<&Minting>,
        // The refresh family the tokens are minted with, if any.
        family: Option<&str>,
    ) -> Result<Prepared, OAuthError> {
        let now = minting.map_or_else(|| self.clock.unix(), |m| m.now);
        // The tenant's pre-token hook is looked up alongside the grant
        // decision's reads unless the caller did (its presence is checked
        // on every mint).
        let (grant, hook): (Grant, _) = match hook {
            Some(hook) => (self.effective_grant(client, authz).await?, hook),
            None => tokio::try_join!(self.effective_grant(client, authz), self.pre_token_hook(authz))?,
        };
        let scope = grant.scope.join(" ");
        let at_ttl = self.ttl.access_token_ttl_secs;
        let access = AccessClaims {
            iss: self.iss(),
            sub: authz.sub.clone(),
            aud: grant.resource.clone().unwrap_or_else(|| client.client_id.clone()),
            exp: access_exp(now, at_ttl),
            iat: now,
            jti: minting.map_or_else(|| crate::tokens::random_token(16), |m| m.jti.clone()),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            tenant: Some(authz.tenant.to_string()),
            auth_time: Some(authz.auth_time),
            sid: Some(authz.sid.clone()),
            subject_jti: Vec::new(),
            fam: family.map(family_claim),
        };
        let read;
        let user: Option<&User> = if with_id_token {
            match user {
                Some(u) => Some(u),
                None => {
                    read = self
                        .directory
                        .get(&authz.tenant, &authz.sub)
                        .await?
                        .ok_or_else(|| OAuthError::invalid_grant("code.user_gone", "The user no longer exists."))?;
                    Some(&read)
                }
            }
        } else {
            None
        };
        let id_claims = user.map(|user| {
            let mut claims = Map::new();
            claims.insert("iss".into(), json!(self.iss()));
            claims.insert("sub".into(), json!(authz.sub));
            claims.insert("aud".into(), json!(client.client_id));
            claims.insert("azp".into(), json!(client.client_id));
            claims.insert(
                "exp".into(),
                json!(now + i64::try_from(self.ttl.id_token_ttl_secs).unwrap_or(3600)),
            );
            claims.insert("iat".into(), json!(now));
            claims.insert("auth_time".into(), json!(authz.auth_time));
            claims.insert("sid".into(), json!(authz.sid));
            claims.insert("tenant".into(), json!(authz.tenant));
            claims.insert("connection".into(), json!(authz.connection));
            if let Some(n) = &authz.nonce {
                claims.insert("nonce".into(), json!(n));
            }
            if !authz.amr.is_empty() {
                claims.insert("amr".into(), json!(authz.amr));
            }
            if let Some(acr) = &authz.acr {
                claims.insert("acr".into(), json!(acr));
            }
            profile_claims(user, &grant.scope, &mut claims);
            claims
        });
        let access_claims = match serde_json::to_value(&access) {
            Ok(Value::Object(m)) => m,
            Ok(_) => Map::new(),
            Err(e) => return Err(OAuthError::server("token.claims_unserializable", e)),
        };
        // hooks: the tenant's pre-token-generation hook may add, override or
        // suppress claims (provider/pre_token.rs); a failing hook fails the
        // request, so no token is ever issued without it.
        let (access_claims, id_claims) = self
            .pre_token(hook, authz, &grant.scope, access_claims, id_claims, user)
            .await?;
        // One key snapshot for both tokens, so `at_hash` follows the algorithm
        // of the key that really signs, even across a rotation.
        let signer = self.keys.signer().await?;
        Ok(Prepared {
            signer,
            access,
            access_claims,
            id_claims,
            scope,
            at_ttl,
        })
    }

    /// Signs what [`Provider::prepare`] prepared, with the refresh token (if
    /// any) the grant has by now rotated or started.
    fn sign(prepared: Prepared, refresh_token: Option<String>) -> Result<(TokenResponse, AccessClaims), OAuthError> {
        let Prepared {
            signer,
            access,
            access_claims,
            id_claims,
            scope,
            at_ttl,
        } = prepared;
        let access_token = signer.sign("at+jwt", &Value::Object(access_claims))?;
        let id_token = match id_claims {
            Some(mut claims) => {
                claims.insert(
                    "at_hash".into(),
                    json!(crate::tokens::at_hash(&access_token, signer.algorithm())),
                );
                Some(signer.sign("JWT", &Value::Object(claims))?)
            }
            None => None,
        };
        let resp = TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: at_ttl,
            id_token,
            refresh_token,
            scope,
            issued_token_type: None,
        };
        Ok((resp, access))
    }

    async fn revoke_jti(&self, tenant: &TenantId, jti: &str, exp: i64) -> Result<(), OAuthError> {
        let left = (exp - self.clock.unix()).max(1);
        self.store
            .put(
                &revoked_key(tenant, jti),
                b"1",
                Some(Duration::from_secs(left.unsigned_abs())),
            )
            .await?;
        Ok(())
    }

    /// Verifies an access token and checks that it has not been revoked and
    /// that what it came from is still there: the tenant and connection (as
    /// the same incarnation), the user (enabled), and the client (still
    /// registered and still allowed to serve the tenant).
    pub async fn check_access_token(&self, token: &str) -> Result<AccessClaims, OAuthError> {
        Ok(self.check_access_token_user(token).await?.0)
    }

    async fn check_access_token_user(&self, token: &str) -> Result<(AccessClaims, Option<User>), OAuthError> {
        let claims: AccessClaims = self
            .keys
            .verify(token, "at+jwt", &self.iss())
            .await
            .map_err(OAuthError::unverified_token)?;
        let Some(tenant) = claims.tenant.as_deref() else {
            // A client_credentials token: about the app itself, no user.
            let revoked_key = app_revoked_key(&claims.jti);
            let (revoked, client, retired_at) = tokio::try_join!(
                self.store.get(&revoked_key),
                self.clients.get(&claims.client_id),
                self.client_retired_at(&claims.client_id)
            )?;
            if revoked.is_some() {
                return Err(OAuthError::invalid_token(
                    "token.revoked",
                    "The access token has been revoked.",
                ));
            }
            if client.is_none() {
                return Err(OAuthError::invalid_token(
                    "token.client_gone",
                    "The application the token was issued to no longer exists.",
                ));
            }
            if retired_at.is_some_and(|at| claims.iat <= at) {
                return Err(OAuthError::invalid_token(
                    "token.client_superseded",
                    "The application was registered again since this token was issued.",
                ));
            }
            return Ok((claims, None));
        };
        let tenant = TenantId::parse(tenant)
            .map_err(|_| OAuthError::invalid_token("token.invalid", "The access token is invalid."))?;
        // Independent reads, sent together: this runs on every API call.
        let (revoked, subject_revoked, active, client, retired_at) = tokio::try_join!(
            self.revoked(&tenant, &claims),
            self.any_revoked(&tenant, &claims.subject_jti),
            self.directory.active_in(&tenant, &claims.sub),
            self.clients.get(&claims.client_id),
            self.client_retired_at(&claims.client_id)
        )?;
        let (tenant_record, active) = active;
        if revoked.token {
            return Err(OAuthError::invalid_token(
                "token.revoked",
                "The access token has been revoked.",
            ));
        }
        // An exchanged token dies with the token it was exchanged for.
        if subject_revoked {
            return Err(OAuthError::invalid_token(
                "token.subject_revoked",
                "The token this one was exchanged for has been revoked.",
            ));
        }
        let user = match active {
            Ok(u) => u,
            Err(why) => {
                let reason = match why {
                    Inactive::TenantGone => "token.tenant_gone",
                    Inactive::ConnectionGone => "token.connection_gone",
                    Inactive::UserGone => "token.user_gone",
                    Inactive::UserDisabled => "token.user_disabled",
                    Inactive::Superseded => "token.user_superseded",
                };
                return Err(OAuthError::invalid_token(reason, inactive_description(why)));
            }
        };
        // The stamp is in the user record the liveness check just read.
        if credentials_reset_since(&user, claims.iat) {
            return Err(OAuthError::invalid_token("token.credentials_reset", CREDENTIALS_RESET));
        }
        match client {
            Some(c) if c.allows_tenant(&tenant) => {}
            Some(_) => {
                return Err(OAuthError::invalid_token(
                    "token.tenant_not_allowed",
                    "The application may no longer serve this organization.",
                ))
            }
            None => {
                return Err(OAuthError::invalid_token(
                    "token.client_gone",
                    "The application the token was issued to no longer exists.",
                ))
            }
        }
        // The tenant's side (`allowed_clients`), in the record the liveness
        // check just read: an app the organization stopped using is cut off
        // at once, not when its tokens expire.
        if !tenant_allows_client(tenant_record.as_deref(), &claims.client_id) {
            return Err(OAuthError::invalid_token(
                "token.client_not_allowed_by_tenant",
                "The organization no longer uses this application.",
            ));
        }
        if retired_at.is_some_and(|at| claims.iat <= at) {
            return Err(OAuthError::invalid_token(
                "token.client_superseded",
                "The application was registered again since this token was issued.",
            ));
        }
        // Last: a family is also revoked as a consequence of what the
        // checks above name more precisely (a user disabled, an app gone).
        if revoked.family {
            return Err(OAuthError::invalid_token(
                "token.family_revoked",
                "The refresh token this access token was issued with has been revoked.",
            ));
        }
        Ok((claims, Some(user)))
    }

    /// Whether the access token `claims` was revoked, and whether the
    /// refresh family it was minted with was: two plain reads sent
    /// together (one wait, and no script for the store to run).
    async fn revoked(&self, tenant: &TenantId, claims: &AccessClaims) -> Result<Revoked, StoreError> {
        let jti = revoked_key(tenant, &claims.jti);
        let fam = claims.fam.as_deref().map(|f| revoked_family_key(tenant, f));
        let (token, family) = tokio::try_join!(self.store.exists(&jti), async {
            match &fam {
                Some(key) => self.store.exists(key).await,
                None => Ok(false),
            }
        })?;
        Ok(Revoked { token, family })
    }

    /// Whether any of `jtis` (an exchanged token's subject tokens) was
    /// revoked. No read for an ordinary token; the chain is short.
    async fn any_revoked(&self, tenant: &TenantId, jtis: &[String]) -> Result<bool, StoreError> {
        for jti in jtis {
            if self.store.get(&revoked_key(tenant, jti)).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Userinfo for a valid access token.
    pub async fn userinfo(&self, token: &str) -> Result<Value, OAuthError> {
        let (claims, user) = self.check_access_token_user(token).await?;
        // A client_credentials token is about no user.
        let user =
            user.ok_or_else(|| OAuthError::invalid_token("token.no_user", "The access token is not about a user."))?;
        // OpenID Connect Core 5.3: the access token of an OpenID Connect
        // sign-in. One without `openid` (a refresh that narrowed the scope,
        // a token exchanged for an API) is for its API only, as Keycloak
        // answers too. Checked after the token's own checks, so a revoked
        // token is reported as revoked.
        if !claims.scope.split_whitespace().any(|s| s == "openid") {
            return Err(OAuthError::insufficient_scope(
                "userinfo.no_openid_scope",
                "The access token was not granted the openid scope.",
            ));
        }
        let mut out = Map::new();
        out.insert("sub".into(), json!(user.sub));
        out.insert("tenant".into(), json!(user.tenant));
        out.insert("connection".into(), json!(user.connection));
        let scope: Vec<String> = claims.scope.split_whitespace().map(str::to_owned).collect();
        profile_claims(&user, &scope, &mut out);
        Ok(Value::Object(out))
    }

    /// RFC 7009: revokes a token issued to `client`. Unknown tokens succeed silently.
    ///
    /// An access token is revoked once its signature and issuer check out,
    /// whatever its user, tenant or app are now: one refused today only
    /// because, say, its user is disabled would work again once the user is
    /// enabled, so a 200 must have written its deny-list entry. A store that
    /// fails is `temporarily_unavailable`, never a 200 that revoked nothing.
    pub async fn revoke(&self, client: &Client, token: &str) -> Result<(), OAuthError> {
        if let Some(f) = self.peek_refresh(token).await? {
            if f.authz.client_id == client.client_id {
                self.revoke_family(&f.authz.tenant, &f.id).await?;
            }
            return Ok(());
        }
        let claims = match self.keys.verify::<AccessClaims>(token, "at+jwt", &self.iss()).await {
            Ok(claims) => Some(claims),
            Err(e @ crate::tokens::TokenError::Invalid(_)) => {
                tracing::debug!(reason = "revoke.not_our_token", error = %e);
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(claims) = claims {
            if claims.client_id == client.client_id {
                match claims.tenant.as_deref().map(TenantId::parse) {
                    Some(Ok(t)) => self.revoke_jti(&t, &claims.jti, claims.exp).await?,
                    Some(Err(_)) => {}
                    None => {
                        let left = (claims.exp - self.clock.unix()).max(1);
                        self.store
                            .put(
                                &app_revoked_key(&claims.jti),
                                b"1",
                                Some(Duration::from_secs(left.unsigned_abs())),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// RFC 7662: introspects a token issued to `client` (tokens of other
    /// clients are reported inactive, so apps cannot probe each other's tokens).
    pub async fn introspect(&self, client: &Client, token: &str) -> Result<Value, OAuthError> {
        if let Some(f) = self.peek_refresh(token).await? {
            if f.authz.client_id == client.client_id {
                if let Err((reason, _)) = self.refresh_still_allowed(client, &f, None).await? {
                    tracing::info!(reason, tenant = %f.authz.tenant, "introspected refresh token inactive");
                    return Ok(json!({"active": false}));
                }
                return Ok(json!({
                    "active": true, "token_type": "refresh_token", "client_id": f.authz.client_id,
                    "sub": f.authz.sub, "scope": f.authz.scope.join(" "), "exp": f.expires_at,
                    "iss": self.iss(), "tenant": f.authz.tenant,
                }));
            }
            return Ok(json!({"active": false}));
        }
        match self.check_access_token(token).await {
            Ok(c) if c.client_id == client.client_id => {
                let mut v = json!({
                    "active": true, "token_type": "Bearer", "client_id": c.client_id, "sub": c.sub,
                    "scope": c.scope, "exp": c.exp, "iat": c.iat, "iss": c.iss, "aud": c.aud,
                    "jti": c.jti,
                });
                if let (Some(t), Some(o)) = (c.tenant, v.as_object_mut()) {
                    o.insert("tenant".into(), json!(t));
                }
                Ok(v)
            }
            Ok(_) => Ok(json!({"active": false})),
            Err(e) => match e.code {
                OAuthErrorCode::InvalidToken => {
                    tracing::info!(reason = e.reason, "introspected access token inactive");
                    Ok(json!({"active": false}))
                }
                OAuthErrorCode::InvalidRequest
                | OAuthErrorCode::InvalidClient
                | OAuthErrorCode::InvalidGrant
                | OAuthErrorCode::UnauthorizedClient
                | OAuthErrorCode::UnsupportedGrantType
                | OAuthErrorCode::InvalidScope
                | OAuthErrorCode::ServerError
                | OAuthErrorCode::TemporarilyUnavailable
                | OAuthErrorCode::InvalidTarget
                | OAuthErrorCode::InsufficientScope => Err(e),
            },
        }
    }
}

/// The access token's `jti` and issue time, chosen before the mint: a code
/// grant names them in the code's "used" marker (see `codes`).
struct Minting {
    jti: String,
    now: i64,
}

/// An access token's expiry when issued at `now` for `at_ttl` seconds.
fn access_exp(now: i64, at_ttl: u64) -> i64 {
    now + i64::try_from(at_ttl).unwrap_or(3600)
}

/// The claims of a token response, decided and passed through the hooks,
/// with the key snapshot that will sign them (see [`Provider::prepare`]).
struct Prepared {
    signer: crate::tokens::Signer,
    access: AccessClaims,
    access_claims: Map<String, Value>,
    id_claims: Option<Map<String, Value>>,
    scope: String,
    at_ttl: u64,
}

/// The user-safe description of why a user's tokens are refused.
fn inactive_description(why: Inactive) -> &'static str {
    match why {
        Inactive::TenantGone => "The organization no longer exists.",
        Inactive::ConnectionGone => "The sign-in connection no longer exists.",
        Inactive::UserGone | Inactive::Superseded => "The user no longer exists.",
        Inactive::UserDisabled => "The user is disabled.",
    }
}

/// The user-safe description of a refusal after a credentials reset.
const CREDENTIALS_RESET: &str = "The user's password was reset or changed after this was issued.";

/// Whether the user's password was reset or changed after `at` (an `iat`
/// or `auth_time`, Unix seconds): then what was issued at `at` is refused.
/// Same-second issues pass (as Keycloak's not-before does): the sessions
/// and refresh families that could issue them were ended with the stamp.
pub(crate) fn credentials_reset_since(user: &User, at: i64) -> bool {
    user.not_before.is_some_and(|nb| at < nb)
}

fn revoked_key(tenant: &TenantId, jti: &str) -> Key {
    Key::tenant(tenant.as_str(), "revoked", format!("jti:{jti}"))
}

/// What [`Provider::revoked`] found of an access token's revocation.
struct Revoked {
    /// The token itself (`/revoke`, a replayed code).
    token: bool,
    /// The refresh family it was minted with.
    family: bool,
}

/// The marker of a revoked refresh family, by its [`family_claim`]: the
/// access tokens minted with the family are refused while it lasts.
pub(crate) fn revoked_family_key(tenant: &TenantId, fam: &str) -> Key {
    Key::tenant(tenant.as_str(), "revoked", format!("fam:{fam}"))
}

/// Keys of revoked `client_credentials` tokens, which belong to no tenant.
fn app_revoked_key(jti: &str) -> Key {
    Key::global("revoked", format!("jti:{jti}"))
}

/// What [`crate::directory::Directory::active_at`] answers: the tenant
/// record read with it, and the user when active.
type Liveness = (Option<Arc<crate::tenant::Tenant>>, Result<User, Inactive>);

/// A refresh token is issued only when `offline_access` was granted (for
/// every kind of client) and the app may use the refresh grant.
fn wants_refresh(client: &Client, authz: &Authorization) -> bool {
    authz.scope.iter().any(|s| s == "offline_access") && client.allows_grant(GrantType::RefreshToken)
}

/// The user's claims the granted `scope` asks for (OIDC Core §5.4, with
/// `groups` as Dex and Okta name it): `email` → email, email_verified;
/// `profile` → name, given_name, family_name; `groups` → groups.
fn profile_claims(user: &User, scope: &[String], out: &mut Map<String, Value>) {
    let has = |s: &str| scope.iter().any(|x| x == s);
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.insert(k.into(), json!(v));
        }
    };
    if has("email") {
        put("email", &user.email);
    }
    if has("profile") {
        put("name", &user.name);
        put("given_name", &user.given_name);
        put("family_name", &user.family_name);
    }
    if has("email") && user.email.is_some() {
        out.insert("email_verified".into(), json!(user.email_verified.unwrap_or(false)));
    }
    if has("groups") && !user.groups.is_empty() {
        out.insert("groups".into(), json!(user.groups));
    }
}

/// The security event of an authorization code presented twice (never the code).
fn code_reuse_event(client_id: &str, tenant: &TenantId) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent::security(
        &crate::audit::Actor::Client(client_id.to_owned()),
        "code.reuse_detected",
        crate::audit::Target::new("client", client_id),
        crate::audit::Outcome::Failure,
        "code.reused",
    )
    .tenant(tenant)
}

/// Whether the tenant's settings let it use the app (`allowed_clients`),
/// for the tenant record read in this request. A tenant that is gone is
/// left to the liveness checks, which refuse it.
fn tenant_allows_client(tenant: Option<&crate::tenant::Tenant>, client_id: &str) -> bool {
    tenant.is_none_or(|t| t.settings.allows_client(client_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_ok(challenge, verifier));
        assert!(!pkce_ok(challenge, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"));
        assert!(!pkce_ok(challenge, "short"));
    }
}
