//! The browser bindings of pending logins, in a cookie of their own.
//!
//! Every login sent to an IdP is bound to the browser that started it: the
//! pending login keeps the SHA-256 of a random secret, and the browser keeps
//! the secret, which must come back at the same-site step that finishes the
//! login (the OIDC callback, the SAML continuation). The browser keeps it in
//! the cookie `<sessions.cookie_name>_logins` (HttpOnly, SameSite=Lax,
//! Secure on https, for as long as a pending login lives): up to
//! [`MAX_BROWSER_LOGINS`] `id:secret` entries joined by `.`, newest last.
//!
//! A cookie rather than the browser's server-side session: starting a login
//! then writes nothing but the pending login, and a browser that has no
//! session yet gets none until it signs in (no session record per started
//! login, no store write after the handler). Both are bearer values the
//! browser holds, with the same cookie attributes, so the binding is as
//! strong as before.
//!
//! Bindings an earlier version kept in the session (field
//! [`crate::broker::session::LOGINS_FIELD`]) are still honoured where a login finishes, so a rolling
//! upgrade loses no login in flight.

use super::AppState;
use crate::broker::session::{BrowserLogins, MAX_BROWSER_LOGINS};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

/// The longest cookie value read: eight entries are about 530 bytes.
const MAX_VALUE: usize = 2048;

/// The name of the bindings cookie.
pub fn cookie_name(state: &AppState) -> String {
    format!("{}_logins", state.session.cookie_name)
}

/// The value of the cookie `name` in the request, if sent once. Sent twice,
/// one of them was set by someone else (a sibling domain's cookie with a
/// more specific path comes first): neither is trusted.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = found.next()?;
    match found.next() {
        None => Some(first),
        Some(_) => {
            tracing::warn!(
                reason = "cookie.duplicate",
                cookie = name,
                "a cookie sent twice is not trusted"
            );
            None
        }
    }
}

/// The bindings the request's cookie carries (malformed entries skipped,
/// at most the newest [`MAX_BROWSER_LOGINS`]).
pub fn from_cookie(state: &AppState, headers: &HeaderMap) -> BrowserLogins {
    cookie_value(headers, &cookie_name(state))
        .map(parse)
        .unwrap_or_default()
}

/// The entries of a cookie value (malformed entries skipped, at most the
/// newest [`MAX_BROWSER_LOGINS`]; nothing from a value over [`MAX_VALUE`]).
fn parse(value: &str) -> BrowserLogins {
    if value.len() > MAX_VALUE {
        return Vec::new();
    }
    let mut logins: BrowserLogins = value
        .split('.')
        .filter_map(|entry| entry.split_once(':'))
        .filter(|(id, secret)| well_formed(id) && well_formed(secret))
        .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        .collect();
    let extra = logins.len().saturating_sub(MAX_BROWSER_LOGINS);
    logins.drain(..extra);
    logins
}

/// Ids and secrets are base64url (`tokens::random_token`).
fn well_formed(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `Set-Cookie` header that makes the browser hold `logins`: the list,
/// or the cookie's removal when it is empty.
fn set_cookie(state: &AppState, logins: &BrowserLogins) -> Option<HeaderValue> {
    let value = encode(logins);
    let max_age = if logins.is_empty() {
        0
    } else {
        state.broker.login_ttl.as_secs()
    };
    let secure = if state.session.secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        cookie_name(state)
    ))
    .ok()
}

/// The cookie value holding `logins` ([`parse`] reads it back).
fn encode(logins: &BrowserLogins) -> String {
    logins
        .iter()
        .map(|(id, secret)| format!("{id}:{secret}"))
        .collect::<Vec<_>>()
        .join(".")
}

/// Adds to `resp` the cookie that makes the browser hold `logins`. Fails
/// closed: a binding that cannot be handed to the browser makes a login
/// that could never be finished in it.
pub fn hand_over(state: &AppState, logins: &BrowserLogins, mut resp: Response) -> Response {
    match set_cookie(state, logins) {
        Some(c) => {
            resp.headers_mut().append(header::SET_COOKIE, c);
            resp
        }
        None => super::flows::session_failed("the login binding cookie could not be encoded"),
    }
}

/// The bindings a finishing step can check: the cookie's and, from an
/// earlier version, the session's.
pub struct Presented {
    cookie: BrowserLogins,
    session: BrowserLogins,
}

impl Presented {
    /// Reads both sources; `session` is the list the session held.
    pub fn new(state: &AppState, headers: &HeaderMap, session: BrowserLogins) -> Self {
        Self {
            cookie: from_cookie(state, headers),
            session,
        }
    }

    /// Every binding presented, for the broker to take the one it needs from.
    pub fn all(&self) -> BrowserLogins {
        self.session.iter().chain(&self.cookie).cloned().collect()
    }

    /// After the broker took from [`Self::all`] and left `left`: what
    /// changed of each source.
    pub fn settle(self, left: &BrowserLogins) -> Settled {
        let kept = |list: &BrowserLogins| -> BrowserLogins {
            list.iter()
                .filter(|(id, _)| left.iter().any(|(l, _)| l == id))
                .cloned()
                .collect()
        };
        let (cookie, session) = (kept(&self.cookie), kept(&self.session));
        Settled {
            session: (session.len() != self.session.len()).then_some(session),
            cookie: (cookie.len() != self.cookie.len()).then_some(cookie),
        }
    }
}

/// What changed of the bindings once a finishing step ran.
pub struct Settled {
    /// The session's (earlier version's) list, when an entry was used.
    pub session: Option<BrowserLogins>,
    /// The cookie's list, when an entry was used.
    cookie: Option<BrowserLogins>,
}

impl Settled {
    /// `resp` with the cookie updated, if it changed.
    pub fn respond(&self, state: &AppState, resp: Response) -> Response {
        match &self.cookie {
            Some(logins) => hand_over(state, logins, resp),
            None => resp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn cookie_value_finds_the_named_cookie_among_others() {
        let h = headers("a=1; portcullis_session_logins=x:y; b=2");
        assert_eq!(cookie_value(&h, "portcullis_session_logins"), Some("x:y"));
        assert_eq!(cookie_value(&h, "portcullis_session"), None);
        // Sent twice: neither copy.
        let h = headers("portcullis_session_logins=a:b; x=1; portcullis_session_logins=x:y");
        assert_eq!(cookie_value(&h, "portcullis_session_logins"), None);
        assert_eq!(cookie_value(&h, "x"), Some("1"));
    }

    fn entry() -> (String, String) {
        (crate::tokens::random_token(24), crate::tokens::random_token(24))
    }

    #[test]
    fn a_cookie_value_reads_back_what_was_written() {
        let logins: BrowserLogins = (0..MAX_BROWSER_LOGINS).map(|_| entry()).collect();
        assert_eq!(parse(&encode(&logins)), logins);
        assert!(parse("").is_empty());
    }

    #[test]
    fn malformed_entries_are_skipped_and_only_the_newest_are_kept() {
        let good = entry();
        let value = format!("junk.:x.a:.{}:{}.a:b:c.a b:c", good.0, good.1);
        assert_eq!(parse(&value), vec![good]);
        let many: BrowserLogins = (0..MAX_BROWSER_LOGINS + 3).map(|_| entry()).collect();
        assert_eq!(parse(&encode(&many)), many[3..].to_vec());
        let huge = "a:b.".repeat(MAX_VALUE);
        assert!(parse(&huge).is_empty(), "an oversized value is not read at all");
    }

    #[test]
    fn well_formed_accepts_base64url_only() {
        assert!(well_formed(&crate::tokens::random_token(24)));
        for bad in ["", "a b", "a.b", "a:b", "a;b", "a=b", "ä"] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }
}
