//! Forward auth (the decision behind `GET /forward-auth`): nginx
//! `auth_request`, Traefik ForwardAuth and Envoy ext_authz ask whether a
//! request carrying a bearer access token may reach a resource server.
//!
//! The decision, in order, each refusal with its reason code:
//! 1. the proxy names a registered resource server (`resource=`; else 400
//!    `forward_auth.missing_resource` / `forward_auth.unknown_resource`:
//!    a misconfigured proxy, which answers 500 and lets nothing through);
//! 2. a bearer token is present (401 `forward_auth.no_token`) and passes
//!    every check of an access token on use ([`Provider::check_access_token`]:
//!    signature, `exp` on the injected clock, revocation, the user, tenant,
//!    connection and app still active; 401 with that check's reason);
//! 3. its `aud` is the resource server (401 `forward_auth.wrong_audience`:
//!    a token for another API is not a valid token here);
//! 4. it holds every scope of `scope=` (403 `forward_auth.missing_scope`);
//! 5. when the resource server has route rules, the original request (from
//!    `X-Original-URI` or `X-Forwarded-Uri`, method from
//!    `X-Original-Method` or `X-Forwarded-Method`) has a clean path (403
//!    `forward_auth.no_original_uri` / `forward_auth.bad_path`), some rule
//!    matches it (403 `forward_auth.no_route`), and the token holds all the
//!    scopes of one matching rule (403 `forward_auth.missing_scope`).
//!
//! Paths are compared as the proxy sends them, not decoded; a path that
//! decoding or normalisation could turn into another one (`.`/`..` or empty
//! segments, encoded `/`, `\` or `.`, a backslash, a `;` plain or encoded,
//! which servlet containers strip with its path parameter before resolving
//! `..;`, or an encoded `%`) is refused, so what is matched is what the
//! backend serves.

use super::grants::AccessClaims;
use super::resources::{ResourceServer, RouteRule};
use super::{OAuthError, OAuthErrorCode, Provider};

/// What the proxy told us about the request. `Debug` redacts the token
/// and the original URI's query.
#[derive(Clone, Default)]
pub struct ForwardRequest<'a> {
    /// The bearer token, if any.
    pub token: Option<&'a str>,
    /// `resource=`: the resource server's identifier.
    pub resource: Option<&'a str>,
    /// `scope=`: space-separated scopes the token must hold.
    pub scope: Option<&'a str>,
    /// The original request's URI (path and query).
    pub original_uri: Option<&'a str>,
    /// The original request's method.
    pub original_method: Option<&'a str>,
    /// The proxy's headers disagree about the original request (say,
    /// `X-Original-URI` and `X-Forwarded-Uri` name different paths): one of
    /// them came from the client, which a proxy may pass on, so neither is
    /// believed.
    pub conflicting: bool,
}

impl std::fmt::Debug for ForwardRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardRequest")
            .field("token", &crate::secret::Redacted::of(&self.token))
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field(
                "original_uri",
                &self.original_uri.map(|u| u.split_once('?').map_or(u, |(path, _)| path)),
            )
            .field("original_method", &self.original_method)
            .field("conflicting", &self.conflicting)
            .finish()
    }
}

/// An allowed request: the identity to pass downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The user's `sub` (the client id for an app token).
    pub sub: String,
    /// The user's tenant (none for an app token).
    pub tenant: Option<String>,
    /// The app the token was issued to.
    pub client_id: String,
    /// The token's scopes, as issued.
    pub scopes: Vec<String>,
}

/// How a refused request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    /// 400: the proxy's request is wrong (configuration).
    BadRequest,
    /// 401: no valid token for this resource server.
    Unauthorized,
    /// 403: a valid token without what this request needs.
    Forbidden,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The answer's status.
    pub status: DenyStatus,
    /// The stable reason code.
    pub reason: &'static str,
    /// A description safe to send.
    pub description: String,
    /// For 403: the scopes that would have allowed it (space-separated).
    pub scope: Option<String>,
    /// True when no token was presented at all (RFC 6750 §3.1: no error code).
    pub no_token: bool,
}

fn deny(status: DenyStatus, reason: &'static str, description: impl Into<String>) -> Denied {
    Denied {
        status,
        reason,
        description: description.into(),
        scope: None,
        no_token: false,
    }
}

impl Provider {
    /// Decides a forward-auth request. `Err` only when the decision could
    /// not be taken (store outage); refusals are `Ok(Err(_))`.
    pub async fn forward_auth(&self, req: &ForwardRequest<'_>) -> Result<Result<Allowed, Denied>, OAuthError> {
        if req.conflicting {
            return Ok(Err(deny(
                DenyStatus::BadRequest,
                "forward_auth.conflicting_headers",
                "The original request is named twice, differently (X-Original-* and X-Forwarded-*).",
            )));
        }
        let Some(resource) = req.resource.filter(|r| !r.is_empty()) else {
            return Ok(Err(deny(
                DenyStatus::BadRequest,
                "forward_auth.missing_resource",
                "resource is required: the resource server's identifier.",
            )));
        };
        let Some(rs) = self.resources.get(resource).await? else {
            return Ok(Err(deny(
                DenyStatus::BadRequest,
                "forward_auth.unknown_resource",
                "The resource is not a registered resource server.",
            )));
        };
        let Some(token) = req.token.filter(|t| !t.is_empty()) else {
            let mut d = deny(
                DenyStatus::Unauthorized,
                "forward_auth.no_token",
                "A bearer access token is required.",
            );
            d.no_token = true;
            return Ok(Err(d));
        };
        let claims = match self.check_access_token(token).await {
            Ok(c) => c,
            Err(e) if e.code == OAuthErrorCode::InvalidToken => {
                return Ok(Err(deny(DenyStatus::Unauthorized, e.reason, e.description)))
            }
            Err(e) => return Err(e),
        };
        if claims.aud != rs.identifier {
            return Ok(Err(deny(
                DenyStatus::Unauthorized,
                "forward_auth.wrong_audience",
                "The access token is for another resource server.",
            )));
        }
        let held: Vec<String> = claims.scope.split_whitespace().map(str::to_owned).collect();
        if let Some(wanted) = req.scope {
            let missing: Vec<&str> = wanted
                .split_whitespace()
                .filter(|w| !holds(&rs, &claims, &held, w))
                .collect();
            if !missing.is_empty() {
                let mut d = deny(
                    DenyStatus::Forbidden,
                    "forward_auth.missing_scope",
                    "The access token lacks a scope this request needs.",
                );
                d.scope = Some(missing.join(" "));
                return Ok(Err(d));
            }
        }
        if !rs.routes.is_empty() {
            if let Err(d) = check_route(&rs, &claims, &held, req) {
                return Ok(Err(d));
            }
        }
        Ok(Ok(Allowed {
            sub: claims.sub,
            tenant: claims.tenant,
            client_id: claims.client_id,
            scopes: held,
        }))
    }
}

/// The route rules: some rule matching the request whose scopes are all held.
fn check_route(
    rs: &ResourceServer,
    claims: &AccessClaims,
    held: &[String],
    req: &ForwardRequest<'_>,
) -> Result<(), Denied> {
    let Some(uri) = req.original_uri else {
        return Err(deny(
            DenyStatus::Forbidden,
            "forward_auth.no_original_uri",
            "The proxy did not send the original URI (X-Original-URI or X-Forwarded-Uri).",
        ));
    };
    let Some(path) = clean_path(uri) else {
        return Err(deny(
            DenyStatus::Forbidden,
            "forward_auth.bad_path",
            "The request path is not in a form the route rules can judge.",
        ));
    };
    let method = req.original_method.map(str::trim);
    let matching: Vec<&RouteRule> = rs
        .routes
        .iter()
        .filter(|r| r.methods.is_empty() || method.is_some_and(|m| r.methods.iter().any(|x| x == m)))
        .filter(|r| path_matches(&r.path, path, &claims.sub, claims.tenant.as_deref()))
        .collect();
    let Some(first) = matching.first() else {
        return Err(deny(
            DenyStatus::Forbidden,
            "forward_auth.no_route",
            "No route rule of the resource server allows this request.",
        ));
    };
    if matching
        .iter()
        .any(|r| r.scopes.iter().all(|s| holds(rs, claims, held, s)))
    {
        return Ok(());
    }
    let mut d = deny(
        DenyStatus::Forbidden,
        "forward_auth.missing_scope",
        "The access token lacks a scope this route needs.",
    );
    d.scope = Some(first.scopes.join(" "));
    Err(d)
}

/// True if the token's scopes `held` satisfy `wanted`: the same string
/// (after expanding `${sub}`/`${tenant}`), or the same scope of `rs` written
/// bare or qualified.
fn holds(rs: &ResourceServer, claims: &AccessClaims, held: &[String], wanted: &str) -> bool {
    let wanted = match (super::exchange::is_template(wanted), claims.tenant.as_deref()) {
        (false, _) => wanted.to_owned(),
        // A policy variable names a user; an app's own token holds none.
        (true, None) => return false,
        (true, Some(tenant)) => super::exchange::expand(wanted, &claims.sub, tenant),
    };
    if super::exchange::is_template(&wanted) {
        return false;
    }
    let name = rs.resolve(&wanted);
    held.iter()
        .any(|h| *h == wanted || (name.is_some() && rs.resolve(h) == name))
}

/// The path of a URI reported by the proxy, if it is one the rules can
/// judge exactly: starts with `/`, no `.`/`..` or empty inner segments, no
/// backslash, no percent-encoded `/`, `\` or `.`, no `;` (plain or
/// encoded: servlet containers drop `;`-parameters from a segment before
/// resolving it, so `/a/..;/b` serves `/b`), and no `%25` (a second
/// decoding would make any of these). The query is dropped.
pub fn clean_path(uri: &str) -> Option<&str> {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') || path.contains(['\\', ';']) {
        return None;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e", "%00", "%3b", "%25"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return None;
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        if matches!(*s, "." | "..") || (s.is_empty() && i != last) {
            return None;
        }
    }
    Some(path)
}

/// True if `path` (clean) matches the rule `pattern` for the user `sub` of `tenant`.
pub fn path_matches(pattern: &str, path: &str, sub: &str, tenant: Option<&str>) -> bool {
    let mut want = pattern.split('/').skip(1);
    let mut got = path.split('/').skip(1);
    loop {
        match (want.next(), got.next()) {
            (Some("**"), _) => return true,
            (Some(w), Some(g)) => {
                if !segment_matches(w, g, sub, tenant) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn segment_matches(pattern: &str, segment: &str, sub: &str, tenant: Option<&str>) -> bool {
    if pattern == "*" {
        return !segment.is_empty();
    }
    if !pattern.contains("${") {
        return pattern == segment;
    }
    // Policy variables name a user: an app's own token (no tenant, `sub` =
    // its client id) never matches them, whatever the app is called.
    let Some(tenant) = tenant else {
        return false;
    };
    let expanded = super::exchange::expand(pattern, sub, tenant);
    !sub.is_empty() && !expanded.contains("${") && expanded == segment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_literally_with_wildcards_and_the_users_own_segment() {
        assert!(path_matches("/users/${sub}/**", "/users/u1/files/a", "u1", Some("t")));
        assert!(path_matches("/users/${sub}/**", "/users/u1", "u1", Some("t")));
        assert!(!path_matches("/users/${sub}/**", "/users/u2/files", "u1", Some("t")));
        assert!(!path_matches("/users/${sub}", "/users/u1x", "u1", Some("t")));
        assert!(path_matches("/t/${tenant}/*", "/t/acme/x", "u1", Some("acme")));
        assert!(!path_matches("/t/${tenant}/*", "/t/acme/x", "u1", None));
        assert!(
            !path_matches("/users/${sub}", "/users/app", "app", None),
            "an app token is no user"
        );
        assert!(!path_matches("/t/${tenant}/*", "/t/acme/x/y", "u1", Some("acme")));
        assert!(!path_matches("/a/*", "/a/", "u1", None));
        assert!(path_matches("/a", "/a", "u1", None));
        assert!(!path_matches("/a", "/a/b", "u1", None));
    }

    #[test]
    fn paths_that_normalise_into_others_are_refused() {
        assert_eq!(clean_path("/users/u1/x?y=1"), Some("/users/u1/x"));
        for bad in [
            "/users/u1/../u2",
            "/users/u1/./x",
            "/users//u1",
            "/users/u1/%2e%2e/u2",
            "/users/u1%2F..%2Fu2",
            "/users/u1\\..\\u2",
            "users/u1",
            "http://host/users/u1",
            "/users/u1/..;/u2",
            "/users/u1/..;x=1/u2",
            "/users/u1;jsessionid=1/x",
            "/users/u1/..%3b/u2",
            "/users/u1/..%3B/u2",
            "/users/u1/%252e%252e/u2",
            "/users/u1%252F..%252Fu2",
        ] {
            assert_eq!(clean_path(bad), None, "{bad}");
        }
    }
}
