//! A scripted, non-JavaScript browser: a cookie jar that honours SameSite
//! like Chromium, redirects followed one by one and recorded, and HTML form
//! submission. It is how flow tests walk through the gateway, the IdP's login
//! page and the gateway's auto-submit SAML POST form.
//!
//! Every request knows where it comes from: a typed URL (no initiator), or the
//! page a form or link is on. A request is same-site when its initiator and
//! every URL earlier in its redirect chain are same-site (scheme and
//! registrable domain) with it. Then every cookie goes; otherwise `Strict`
//! cookies never go, and `Lax` ones (and those without SameSite, Chromium's
//! default) only on a top-level navigation with a safe method (GET): a
//! cross-site form POST carries no Lax cookie, as in Chromium.

use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use tower_sessions::cookie::time::OffsetDateTime;
use tower_sessions::cookie::{Cookie, SameSite};
use url::{Host, Url};

use super::html_form::{parse_forms, Form};

/// Redirects followed per navigation before giving up (a loop is a bug).
const MAX_REDIRECTS: usize = 20;

/// One request the browser made.
#[derive(Debug, Clone)]
pub struct Hop {
    /// GET or POST.
    pub method: Method,
    /// The URL requested.
    pub url: Url,
    /// The status answered.
    pub status: StatusCode,
    /// Whether the request was same-site (initiator and redirect chain).
    pub same_site: bool,
    /// The names of the cookies sent with it.
    pub cookies_sent: Vec<String>,
}

/// One answer, without following its redirect (see [`Browser::send`]).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
    /// The names of the cookies the request carried.
    pub cookies_sent: Vec<String>,
}

impl Exchange {
    /// The `Location` header, resolved against `base`.
    pub fn location(&self, base: &Url) -> Option<Url> {
        let l = self.headers.get(LOCATION)?.to_str().ok()?;
        Some(base.join(l).unwrap())
    }

    /// The `Set-Cookie` header values.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// The site of a URL: its scheme and registrable domain (an IP address or a
/// single-label host is its own site; otherwise the last two labels, enough
/// for the test hosts, which use no public suffix of more than one label).
pub fn site(url: &Url) -> (String, String) {
    let registrable = match url.host() {
        Some(Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            let labels: Vec<&str> = d.split('.').collect();
            if labels.len() > 2 {
                labels[labels.len() - 2..].join(".")
            } else {
                d.clone()
            }
        }
        Some(h) => h.to_string(),
        None => String::new(),
    };
    (url.scheme().to_owned(), registrable)
}

/// Whether two URLs are same-site (schemeful).
pub fn same_site(a: &Url, b: &Url) -> bool {
    site(a) == site(b)
}

/// A cookie as the jar keeps it.
#[derive(Debug, Clone)]
struct StoredCookie {
    name: String,
    value: String,
    domain: String,
    host_only: bool,
    path: String,
    secure: bool,
    same_site: Option<SameSite>,
    expires: Option<OffsetDateTime>,
}

impl StoredCookie {
    fn matches(&self, url: &Url) -> bool {
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let domain_ok = host == self.domain || (!self.host_only && host.ends_with(&format!(".{}", self.domain)));
        let path = url.path();
        let path_ok = path == self.path
            || (path.starts_with(&self.path) && (self.path.ends_with('/') || path[self.path.len()..].starts_with('/')));
        let trustworthy = url.scheme() == "https" || host == "localhost" || host == "127.0.0.1";
        let alive = self.expires.is_none_or(|e| e > OffsetDateTime::now_utc());
        domain_ok && path_ok && (!self.secure || trustworthy) && alive
    }

    /// Whether the cookie goes with a request of `method`, `same_site` or not
    /// (every request here is a top-level navigation).
    fn allowed(&self, method: &Method, same_site: bool) -> bool {
        if same_site {
            return true;
        }
        match self.same_site {
            Some(SameSite::None) => self.secure,
            Some(SameSite::Strict) => false,
            // Lax, and Chromium's default for cookies without the attribute.
            Some(SameSite::Lax) | None => matches!(*method, Method::GET | Method::HEAD),
        }
    }
}

/// The browser's cookies.
#[derive(Debug, Default)]
struct CookieJar {
    cookies: Vec<StoredCookie>,
}

impl CookieJar {
    /// Stores a `Set-Cookie` answered by `url`.
    fn store(&mut self, url: &Url, header: &str) {
        let Ok(c) = Cookie::parse(header.to_owned()) else {
            return;
        };
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let (domain, host_only) = match c.domain() {
            Some(d) => {
                let d = d.trim_start_matches('.').to_ascii_lowercase();
                if host != d && !host.ends_with(&format!(".{d}")) {
                    return; // A cookie for a domain this host is not in.
                }
                (d, false)
            }
            None => (host, true),
        };
        let path = match c.path() {
            Some(p) if p.starts_with('/') => p.to_owned(),
            _ => {
                let p = url.path();
                match p.rfind('/') {
                    Some(0) | None => "/".to_owned(),
                    Some(i) => p[..i].to_owned(),
                }
            }
        };
        let expires = match c.max_age() {
            Some(age) => Some(OffsetDateTime::now_utc() + age),
            None => c.expires_datetime(),
        };
        let cookie = StoredCookie {
            name: c.name().to_owned(),
            value: c.value().to_owned(),
            domain,
            host_only,
            path,
            secure: c.secure().unwrap_or(false),
            same_site: c.same_site(),
            expires,
        };
        self.cookies
            .retain(|o| !(o.name == cookie.name && o.domain == cookie.domain && o.path == cookie.path));
        if cookie.expires.is_none_or(|e| e > OffsetDateTime::now_utc()) {
            self.cookies.push(cookie);
        }
    }

    /// The cookies for a request: (`Cookie` header, names).
    fn for_request(&self, url: &Url, method: &Method, same_site: bool) -> (Option<String>, Vec<String>) {
        let mut chosen: Vec<&StoredCookie> = self
            .cookies
            .iter()
            .filter(|c| c.matches(url) && c.allowed(method, same_site))
            .collect();
        // Longer paths first (RFC 6265 §5.4).
        chosen.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        let names = chosen.iter().map(|c| c.name.clone()).collect();
        let header = (!chosen.is_empty()).then(|| {
            chosen
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        });
        (header, names)
    }
}

/// The page a navigation ended on (the first non-redirect answer).
#[derive(Debug, Clone)]
pub struct Page {
    /// Its URL.
    pub url: Url,
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as text.
    pub body: String,
}

impl Page {
    /// The forms on the page.
    pub fn forms(&self) -> Vec<Form> {
        parse_forms(&self.body)
    }

    /// The form with `id`, or the only/first form when `id` is `None`.
    pub fn form(&self, id: Option<&str>) -> Form {
        let forms = self.forms();
        let found = match id {
            Some(id) => forms.into_iter().find(|f| f.id.as_deref() == Some(id)),
            None => forms.into_iter().next(),
        };
        found.unwrap_or_else(|| panic!("no form {id:?} on {} ({}):\n{}", self.url, self.status, self.body))
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("page {} ({}) is not JSON ({e}):\n{}", self.url, self.status, self.body))
    }

    /// The `Content-Type` header.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Where a navigation ended.
#[derive(Debug)]
pub enum Nav {
    /// A page (a non-redirect answer).
    Page(Page),
    /// The URL the navigation was about to request when `stop` held.
    Stopped(Url),
}

impl Nav {
    /// The page; panics when the navigation stopped.
    pub fn page(self) -> Page {
        match self {
            Nav::Page(page) => page,
            Nav::Stopped(url) => panic!("expected a page, stopped at {url}"),
        }
    }

    /// The stop URL; panics when the navigation ended on a page.
    pub fn stopped(self) -> Url {
        match self {
            Nav::Stopped(url) => url,
            Nav::Page(page) => panic!(
                "expected a redirect, got page {} ({}):\n{}",
                page.url, page.status, page.body
            ),
        }
    }
}

fn encode(fields: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A navigation of one of several browsers, to run with [`all_at_once`].
pub type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Page> + 'a>>;

/// Runs `navigations` together on this task (browsers are not `Send`, so
/// not on tasks of their own): every request is sent before any answer is
/// awaited. Their pages, in order.
pub async fn all_at_once(mut navigations: Vec<Pending<'_>>) -> Vec<Page> {
    let mut pages: Vec<Option<Page>> = navigations.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (nav, page) in navigations.iter_mut().zip(pages.iter_mut()) {
            if page.is_none() {
                if let std::task::Poll::Ready(p) = nav.as_mut().poll(cx) {
                    *page = Some(p);
                }
            }
        }
        if pages.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    pages.into_iter().flatten().collect()
}

/// The request that submitting `form` on `page` makes.
fn form_request(page: &Page, form: &Form) -> (Method, Url, Option<String>) {
    let action = if form.action.is_empty() {
        page.url.clone()
    } else {
        page.url.join(&form.action).unwrap()
    };
    if form.method == "POST" {
        (Method::POST, action, Some(encode(&form.fields)))
    } else {
        let mut url = action;
        url.query_pairs_mut().clear().extend_pairs(&form.fields);
        (Method::GET, url, None)
    }
}

/// A browser with its own cookie jar.
pub struct Browser {
    client: reqwest::Client,
    jar: CookieJar,
    /// Every request made, in order, redirects included.
    pub history: Vec<Hop>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A fresh browser: empty jar, empty history.
    pub fn new() -> Self {
        let jar = CookieJar::default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("portcullis-tests-browser/1")
            .build()
            .unwrap();
        Self {
            client,
            jar,
            history: Vec::new(),
        }
    }

    /// GET `url` as if typed into the address bar (no initiator: same-site),
    /// following redirects.
    pub async fn get(&mut self, url: &Url) -> Page {
        match self.navigate(Method::GET, url.clone(), None, None, &|_| false).await {
            Nav::Page(page) => page,
            Nav::Stopped(url) => unreachable!("stopped at {url}"),
        }
    }

    /// GET `url`, following redirects, but without requesting a URL for
    /// which `stop` holds: that URL is returned instead (a redirect to an
    /// app's callback that the test wants to handle itself).
    pub async fn get_until(&mut self, url: &Url, stop: &dyn Fn(&Url) -> bool) -> Nav {
        self.navigate(Method::GET, url.clone(), None, None, stop).await
    }

    /// GET `url` from a page at `from` (a link followed, a script's
    /// navigation), following redirects until `stop` holds.
    pub async fn get_from_until(&mut self, from: &Url, url: &Url, stop: &dyn Fn(&Url) -> bool) -> Nav {
        self.navigate(Method::GET, url.clone(), None, Some(from), stop).await
    }

    /// Like [`Browser::submit`], stopping before a URL for which `stop` holds.
    pub async fn submit_until(&mut self, page: &Page, form: &Form, stop: &dyn Fn(&Url) -> bool) -> Nav {
        let (method, url, body) = form_request(page, form);
        self.navigate(method, url, body, Some(&page.url), stop).await
    }

    /// POST `fields` form-encoded to `url` from a page at `from` (an
    /// auto-submitted form there), following redirects until `stop` holds.
    pub async fn post_form_from(
        &mut self,
        from: &Url,
        url: &Url,
        fields: &[(String, String)],
        stop: &dyn Fn(&Url) -> bool,
    ) -> Nav {
        let body = encode(fields);
        self.navigate(Method::POST, url.clone(), Some(body), Some(from), stop)
            .await
    }

    /// One request from a page at `from` (`None`: typed), without following
    /// its redirect: cookies are sent and stored by the same rules.
    pub async fn send(
        &mut self,
        method: Method,
        url: &Url,
        fields: Option<&[(String, String)]>,
        from: Option<&Url>,
    ) -> Exchange {
        let same = from.is_none_or(|f| same_site(f, url));
        let (exchange, _) = self.request(&method, url, fields.map(encode), same).await;
        exchange
    }

    /// Submits `form` (found on `page`) with its current field values,
    /// resolving its action against the page URL, and follows redirects.
    pub async fn submit(&mut self, page: &Page, form: &Form) -> Page {
        match self.submit_until(page, form, &|_| false).await {
            Nav::Page(page) => page,
            Nav::Stopped(url) => unreachable!("stopped at {url}"),
        }
    }

    /// Fills `values` into the form `id` (or the first form) of `page` and
    /// submits it.
    pub async fn fill_and_submit(&mut self, page: &Page, id: Option<&str>, values: &[(&str, &str)]) -> Page {
        let mut form = page.form(id);
        for (name, value) in values {
            form.set(name, value);
        }
        self.submit(page, &form).await
    }

    /// The cookies the jar would send to `url` on a same-site request (a
    /// `Cookie` header value).
    pub fn cookies_for(&self, url: &Url) -> Option<String> {
        self.jar.for_request(url, &Method::GET, true).0
    }

    /// The value of cookie `name` the jar would send to `url` (same-site).
    pub fn cookie(&self, url: &Url, name: &str) -> Option<String> {
        self.cookies_for(url)?
            .split("; ")
            .find_map(|c| c.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    /// Takes a `Set-Cookie` as if `url` had answered it (a cookie an earlier
    /// version set, a cookie's removal).
    pub fn store_cookie(&mut self, url: &Url, set_cookie: &str) {
        self.jar.store(url, set_cookie);
    }

    /// Forgets the recorded history (not the cookies).
    pub fn clear_history(&mut self) {
        self.history.clear();
    }

    /// Whether any recorded request went to `origin`'s scheme/host/port.
    pub fn visited_origin(&self, origin: &Url) -> bool {
        self.history.iter().any(|h| h.url.origin() == origin.origin())
    }

    /// The recorded URLs, one per line, for assertion messages.
    pub fn trail(&self) -> String {
        self.history
            .iter()
            .map(|h| format!("{} {} -> {}", h.method, h.url, h.status))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One request: cookies by the SameSite rules, `Set-Cookie` stored, the
    /// hop recorded. Returns the answer and its `Location`, if a redirect.
    async fn request(
        &mut self,
        method: &Method,
        url: &Url,
        body: Option<String>,
        same: bool,
    ) -> (Exchange, Option<String>) {
        let (cookie_header, cookies_sent) = self.jar.for_request(url, method, same);
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(c) = cookie_header {
            req = req.header(COOKIE, c);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\n{}", self.trail()));
        let status = resp.status();
        for v in resp.headers().get_all(SET_COOKIE) {
            if let Ok(v) = v.to_str() {
                self.jar.store(url, v);
            }
        }
        self.history.push(Hop {
            method: method.clone(),
            url: url.clone(),
            status,
            same_site: same,
            cookies_sent: cookies_sent.clone(),
        });
        let location = status
            .is_redirection()
            .then(|| {
                resp.headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .flatten();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        (
            Exchange {
                status,
                headers,
                body,
                cookies_sent,
            },
            location,
        )
    }

    async fn navigate(
        &mut self,
        method: Method,
        url: Url,
        body: Option<String>,
        initiator: Option<&Url>,
        stop: &dyn Fn(&Url) -> bool,
    ) -> Nav {
        let mut method = method;
        let mut url = url;
        let mut body = body;
        // The URLs requested so far in this navigation (the redirect chain).
        let mut chain: Vec<Url> = Vec::new();
        for _ in 0..=MAX_REDIRECTS {
            if stop(&url) {
                return Nav::Stopped(url);
            }
            let same = initiator.is_none_or(|i| same_site(i, &url)) && chain.iter().all(|u| same_site(u, &url));
            let (exchange, location) = self.request(&method, &url, body.clone(), same).await;
            let status = exchange.status;
            match location {
                Some(location) => {
                    chain.push(url.clone());
                    url = url
                        .join(&location)
                        .unwrap_or_else(|e| panic!("bad Location {location:?} from {url}: {e}"));
                    // 307/308 keep method and body; the others become GET.
                    if !matches!(status, StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT) {
                        method = Method::GET;
                        body = None;
                    }
                }
                None => {
                    return Nav::Page(Page {
                        url,
                        status,
                        headers: exchange.headers,
                        body: exchange.body,
                    });
                }
            }
        }
        panic!("more than {MAX_REDIRECTS} redirects:\n{}", self.trail())
    }
}
