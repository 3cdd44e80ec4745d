//! A scripted, non-JavaScript browser: a cookie jar, redirects followed one
//! by one and recorded, and HTML form submission. It is how flow tests walk
//! through the gateway, the IdP's login page and the gateway's auto-submit
//! SAML POST form.

use std::sync::Arc;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};
use url::Url;

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
    jar: Arc<Jar>,
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
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
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

    /// GET `url`, following redirects.
    pub async fn get(&mut self, url: &Url) -> Page {
        match self.navigate(Method::GET, url.clone(), None, &|_| false).await {
            Nav::Page(page) => page,
            Nav::Stopped(url) => unreachable!("stopped at {url}"),
        }
    }

    /// GET `url`, following redirects, but without requesting a URL for
    /// which `stop` holds: that URL is returned instead (a redirect to an
    /// app's callback that the test wants to handle itself).
    pub async fn get_until(&mut self, url: &Url, stop: &dyn Fn(&Url) -> bool) -> Nav {
        self.navigate(Method::GET, url.clone(), None, stop).await
    }

    /// Like [`Browser::submit`], stopping before a URL for which `stop` holds.
    pub async fn submit_until(&mut self, page: &Page, form: &Form, stop: &dyn Fn(&Url) -> bool) -> Nav {
        let (method, url, body) = form_request(page, form);
        self.navigate(method, url, body, stop).await
    }

    /// POST `fields` form-encoded to `url`, following redirects.
    pub async fn post_form(&mut self, url: &Url, fields: &[(String, String)]) -> Page {
        let body = encode(fields);
        match self.navigate(Method::POST, url.clone(), Some(body), &|_| false).await {
            Nav::Page(page) => page,
            Nav::Stopped(url) => unreachable!("stopped at {url}"),
        }
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

    /// The cookies the jar would send to `url` (a `Cookie` header value).
    pub fn cookies_for(&self, url: &Url) -> Option<String> {
        self.jar.cookies(url).and_then(|v| v.to_str().ok().map(str::to_owned))
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

    async fn navigate(&mut self, method: Method, url: Url, body: Option<String>, stop: &dyn Fn(&Url) -> bool) -> Nav {
        let mut method = method;
        let mut url = url;
        let mut body = body;
        for _ in 0..=MAX_REDIRECTS {
            if stop(&url) {
                return Nav::Stopped(url);
            }
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(b.clone());
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\n{}", self.trail()));
            let status = resp.status();
            self.history.push(Hop {
                method: method.clone(),
                url: url.clone(),
                status,
            });
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match (status.is_redirection(), location) {
                (true, Some(location)) => {
                    url = url
                        .join(&location)
                        .unwrap_or_else(|e| panic!("bad Location {location:?} from {url}: {e}"));
                    // 307/308 keep method and body; the others become GET.
                    if !matches!(status, StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT) {
                        method = Method::GET;
                        body = None;
                    }
                }
                _ => {
                    let headers = resp.headers().clone();
                    let body = resp.text().await.unwrap();
                    return Nav::Page(Page {
                        url,
                        status,
                        headers,
                        body,
                    });
                }
            }
        }
        panic!("more than {MAX_REDIRECTS} redirects:\n{}", self.trail())
    }
}
