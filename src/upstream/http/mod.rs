//! The guarded outbound HTTP client for requests to IdPs.
//!
//! Discovery, metadata, JWKS, token and userinfo requests all go through
//! [`OutboundHttp`]: connect and total timeouts, a response size limit
//! enforced while the body streams in, no redirects, no proxies, http(s) only,
//! and no loopback or private addresses unless `allow_private_networks` is set
//! (see [`guard`]). Every failure is an [`UpstreamError`] with an
//! `outbound.*` code.

pub mod guard;

use super::UpstreamError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// Settings of the outbound client.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Permit loopback, private, link-local and unique-local addresses.
    pub allow_private_networks: bool,
    /// Connect-plus-response timeout of one request.
    pub timeout: Duration,
    /// The largest response body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The outbound client. Cheap to clone.
#[derive(Clone)]
pub struct OutboundHttp {
    config: OutboundConfig,
    client: reqwest::Client,
}

/// A request as the oauth2/openidconnect crates build it.
pub type HttpRequest = http::Request<Vec<u8>>;
/// A fully read response (body at most `max_body_bytes`).
pub type HttpResponse = http::Response<Vec<u8>>;

impl OutboundHttp {
    /// Builds the client.
    pub fn new(config: OutboundConfig) -> Result<Self, UpstreamError> {
        let resolver = guard::GuardedResolver {
            allow_private_networks: config.allow_private_networks,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            // A redirect could lead anywhere, including our own network;
            // IdP endpoints are configured exactly, so none are followed.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, out of the guard's reach.
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::internal("outbound.client", e.to_string()))?;
        Ok(Self { config, client })
    }

    /// The settings in force.
    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// Refuses URLs the client must not request before anything is sent:
    /// other schemes, and IP literals in forbidden ranges (reqwest does not
    /// consult the resolver for literals, so the guard checks them here).
    pub fn check_url(&self, url: &Url) -> Result<(), UpstreamError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::internal(
                "outbound.scheme",
                format!("scheme {} is not allowed (only http and https)", url.scheme()),
            ));
        }
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Some(Host::Domain(_)) => None,
            None => {
                return Err(UpstreamError::internal(
                    "outbound.invalid_url",
                    format!("{} has no host", shown(url)),
                ))
            }
        };
        if let Some(ip) = ip {
            if !self.config.allow_private_networks && guard::is_forbidden(ip) {
                return Err(UpstreamError::internal(
                    "outbound.forbidden_address",
                    format!("{ip} is not a public address"),
                ));
            }
        }
        Ok(())
    }

    /// Sends `request` and reads the whole response, whatever its status.
    pub async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, UpstreamError> {
        self.execute_within(request, self.config.max_body_bytes)
            .await
            .map_err(CappedError::into_upstream)
    }

    /// Sends `request` and reads the whole response, whatever its status, if
    /// its body is at most `cap` bytes: a larger one is
    /// [`CappedError::OverCap`], refused from its `Content-Length` before
    /// the body is read, else as soon as the bytes read pass the cap. A cap
    /// above `max_body_bytes` is no cap: the client's own limit applies, and
    /// a body over it is the usual `outbound.too_large`.
    pub async fn execute_within(&self, request: HttpRequest, cap: usize) -> Result<HttpResponse, CappedError> {
        let (parts, body) = request.into_parts();
        let url = Url::parse(&parts.uri.to_string())
            .map_err(|e| UpstreamError::internal("outbound.invalid_url", e.to_string()))?;
        self.check_url(&url)?;
        let mut builder = self.client.request(parts.method, url.clone()).headers(parts.headers);
        if !body.is_empty() {
            builder = builder.body(body);
        }
        let mut resp = builder.send().await.map_err(|e| map_error(&url, &e))?;
        let limit = cap.min(self.config.max_body_bytes);
        let over = || {
            if cap < self.config.max_body_bytes {
                CappedError::OverCap {
                    limit,
                    url: shown(&url),
                }
            } else {
                CappedError::Failed(too_large(&url, limit))
            }
        };
        if resp
            .content_length()
            .is_some_and(|len| usize::try_from(len).map_or(true, |len| len > limit))
        {
            return Err(over());
        }
        let mut out = http::Response::builder().status(resp.status());
        if let Some(headers) = out.headers_mut() {
            *headers = resp.headers().clone();
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| map_error(&url, &e))? {
            if buf.len().saturating_add(chunk.len()) > limit {
                return Err(over());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(out
            .body(buf)
            .map_err(|e| UpstreamError::internal("outbound.request", e.to_string()))?)
    }

    /// GETs `url` and returns the body (at most `max_body_bytes`); a non-2xx
    /// answer is `outbound.status`.
    pub async fn get_bytes(&self, url: &Url) -> Result<Vec<u8>, UpstreamError> {
        self.check_url(url)?;
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json, */*;q=0.5")
            .body(Vec::new())
            .map_err(|e| UpstreamError::internal("outbound.invalid_url", e.to_string()))?;
        success(url, self.execute(request).await?)
    }

    /// GETs `url` and returns the body if it is at most `cap` bytes (see
    /// [`OutboundHttp::execute_within`]); a non-2xx answer is `outbound.status`.
    pub async fn get_bytes_within(&self, url: &Url, accept: &str, cap: usize) -> Result<Vec<u8>, CappedError> {
        self.check_url(url)?;
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, accept)
            .body(Vec::new())
            .map_err(|e| UpstreamError::internal("outbound.invalid_url", e.to_string()))?;
        Ok(success(url, self.execute_within(request, cap).await?)?)
    }

    /// GETs `url` with a bearer token (userinfo); a non-2xx answer is `outbound.status`.
    pub async fn get_bearer(&self, url: &Url, token: &str) -> Result<HttpResponse, UpstreamError> {
        self.check_url(url)?;
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Vec::new())
            .map_err(|e| UpstreamError::internal("outbound.invalid_url", e.to_string()))?;
        let resp = self.execute(request).await?;
        let status = resp.status();
        let body = success(url, resp)?;
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        Ok(out)
    }

    /// POSTs a form (token endpoint) and returns the response whatever its
    /// status: OAuth error answers come as 400 with a JSON body the caller reads.
    pub async fn post_form(
        &self,
        url: &Url,
        fields: &[(&str, &str)],
        basic_auth: Option<(&str, &str)>,
    ) -> Result<HttpResponse, UpstreamError> {
        self.check_url(url)?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut builder = http::Request::post(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((user, pass)) = basic_auth {
            builder = builder.header(http::header::AUTHORIZATION, basic(user, pass));
        }
        let request = builder
            .body(body.into_bytes())
            .map_err(|e| UpstreamError::internal("outbound.invalid_url", e.to_string()))?;
        self.execute(request).await
    }
}

/// Why a request read with a caller's cap ([`OutboundHttp::execute_within`])
/// gave no response.
#[derive(Debug)]
pub enum CappedError {
    /// The body is larger than the caller's cap (below the client's own
    /// limit): the caller names the refusal in its own words.
    OverCap {
        /// The cap, bytes.
        limit: usize,
        /// The URL as a log line may name it ([`shown`]).
        url: String,
    },
    /// Any other failure, as [`OutboundHttp::execute`] reports it.
    Failed(UpstreamError),
}

impl From<UpstreamError> for CappedError {
    fn from(e: UpstreamError) -> Self {
        Self::Failed(e)
    }
}

impl CappedError {
    /// The failure as [`OutboundHttp::execute`] reports it (a body over the
    /// cap is `outbound.too_large`).
    pub fn into_upstream(self) -> UpstreamError {
        match self {
            Self::OverCap { limit, url } => UpstreamError::internal(
                "outbound.too_large",
                format!("the response of {url} exceeds {limit} bytes"),
            ),
            Self::Failed(e) => e,
        }
    }
}

/// `Authorization: Basic` as RFC 6749 §2.3.1 wants it: both parts
/// form-urlencoded before base64, so a `:` in the secret cannot split it.
fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(user), enc(pass));
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// `url` with a user name or password replaced by `…@` (the query kept).
pub fn without_credentials(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.as_str().to_owned();
    }
    let mut bare = url.clone();
    // Fails only for a URL that cannot have credentials, which has none.
    let _ = bare.set_password(None);
    let _ = bare.set_username("");
    let mut out = bare.to_string();
    if let Some(at) = out.find("://") {
        out.insert_str(at + 3, "…@");
    }
    out
}

/// `url` as an error detail or a log line may name it: without its query,
/// which may hold a credential (a hook's `?code=`, an API key), replaced by
/// `?…`, and without a user name or password, replaced by `…@`.
pub fn shown(url: &Url) -> String {
    let credentials = !url.username().is_empty() || url.password().is_some();
    if url.query().is_none() && !credentials {
        return url.as_str().to_owned();
    }
    let mut bare = url.clone();
    bare.set_fragment(None);
    let query = bare.query().is_some();
    bare.set_query(None);
    let mut out = without_credentials(&bare);
    if query {
        out.push_str("?…");
    }
    out
}

fn success(url: &Url, resp: HttpResponse) -> Result<Vec<u8>, UpstreamError> {
    if resp.status().is_success() {
        Ok(resp.into_body())
    } else {
        Err(UpstreamError::internal(
            "outbound.status",
            format!("{} answered {}", shown(url), resp.status()),
        ))
    }
}

fn too_large(url: &Url, limit: usize) -> UpstreamError {
    UpstreamError::internal(
        "outbound.too_large",
        format!("the response of {} exceeds {limit} bytes", shown(url)),
    )
}

/// `e` with the one admin-facing reading of a host name that leads to no
/// public address (see [`UpstreamError::for_admin`]).
fn no_public_address(mut e: UpstreamError, host: &str) -> UpstreamError {
    let host: String = host.chars().take(253).collect();
    e.admin_view = Some(format!(
        "outbound.no_public_address: {host} does not resolve to a public internet address"
    ));
    e
}

fn map_error(url: &Url, err: &reqwest::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        // A host name that resolves only to private addresses and one that
        // does not resolve at all read the same to a tenant admin: told
        // apart, they would map the gateway's internal DNS for anyone who
        // may set up a connection. The code and detail, for the log, say which.
        if let Some(forbidden) = e.downcast_ref::<guard::ForbiddenAddress>() {
            return no_public_address(
                UpstreamError::internal("outbound.forbidden_address", forbidden.to_string()),
                &forbidden.host,
            );
        }
        if let Some(unresolved) = e.downcast_ref::<guard::Unresolved>() {
            return no_public_address(
                UpstreamError::internal("outbound.connect", format!("{}: {unresolved}", shown(url))),
                &unresolved.host,
            );
        }
        source = e.source();
    }
    let code = if err.is_timeout() {
        "outbound.timeout"
    } else if err.is_connect() {
        "outbound.connect"
    } else {
        "outbound.request"
    };
    // reqwest's Display omits the cause; the chain says what actually failed.
    // It names the URL ("... for url (<url>)"): shown without its query.
    let bare = shown(url);
    let mut detail = format!("{bare}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        detail.push_str(&format!(": {e}"));
        source = e.source();
    }
    for named in [Some(url.as_str()), err.url().map(Url::as_str)].into_iter().flatten() {
        if named != bare {
            detail = detail.replace(named, &bare);
        }
    }
    UpstreamError::internal(code, detail)
}

/// Lets the `oauth2`/`openidconnect` crates send their requests through the
/// guarded client (`discover_async(issuer, &outbound)`, `exchange_code(...)
/// .request_async(&outbound)`).
impl<'c> openidconnect::AsyncHttpClient<'c> for OutboundHttp {
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, UpstreamError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_credentials_or_query() {
        for (url, expected) in [
            ("https://idp.example/metadata", "https://idp.example/metadata"),
            (
                "https://idp.example/hook?code=s3cret#frag",
                "https://idp.example/hook?…",
            ),
            (
                "https://user:s3cret@idp.example/metadata",
                "https://…@idp.example/metadata",
            ),
            (
                "https://s3cret@idp.example:8443/m?key=s3cret",
                "https://…@idp.example:8443/m?…",
            ),
            ("http://:s3cret@127.0.0.1/m", "http://…@127.0.0.1/m"),
        ] {
            let got = shown(&Url::parse(url).unwrap());
            assert_eq!(got, expected, "{url}");
            assert!(!got.contains("s3cret"), "{got}");
        }
    }
}
