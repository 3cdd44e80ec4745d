//! How the edge reads a request: the spellings of a path no route or layer
//! knows reach no handler; a parameter named twice on a browser page is
//! refused, never read in one copy by the edge and in the other by the
//! handler; the token endpoints take only a UTF-8 form and refuse anything
//! else in RFC 6749 JSON; and no request header chooses a URL the gateway
//! hands out.

use crate::revocation::{dev_app, register};
use crate::support::browser::Browser;
use crate::support::local::{assert_reason, pkce, Gateway, World};
use crate::support::logs::Captured;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` (a whole HTTP/1.1 request, as written) to the app as
/// it is, without a client normalising its target first, and returns the
/// status of the answer.
async fn raw_status(app: &crate::support::app::TestApp, request: &str) -> u16 {
    let addr = format!(
        "{}:{}",
        app.base.host_str().unwrap(),
        app.base.port_or_known_default().unwrap()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer}"))
}

/// A path spelled otherwise than its route (a doubled or trailing slash, a
/// percent-encoded letter, a dot segment, another case, a `;` parameter)
/// is a 404: the router matches the path as sent, as the edge's route
/// classes, the shedding layer and the route label do, so no spelling
/// reaches a handler past the per-route throttle, the admin API's
/// authentication or the metrics' route template.
#[tokio::test]
async fn a_path_spelled_otherwise_reaches_no_handler() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        rp.client_id, rp.secret
    );
    // The token endpoint as spelled: served (the app has no API to ask
    // for, so an OAuth error, but from the handler).
    let post = |target: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    assert_ne!(raw_status(&app, &post("/token")).await, 404);
    for target in [
        "//token",
        "/token/",
        "/%74oken",
        "/TOKEN",
        "/token;x",
        "/./token",
        "/x/../token",
    ] {
        assert_eq!(raw_status(&app, &post(target)).await, 404, "{target}");
    }
    // The admin API, with the platform token: served as spelled only.
    let get = |target: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
            app.admin_token
        )
    };
    assert_eq!(raw_status(&app, &get("/admin/v1/tenants")).await, 200);
    for target in [
        "//admin/v1/tenants",
        "/admin//v1/tenants",
        "/admin/v1//tenants",
        "/Admin/v1/tenants",
        "/admin/V1/tenants",
        "/%61dmin/v1/tenants",
        "/admin/v1/%74enants",
        "/admin/v1/../v1/tenants",
        "/admin/v1/./tenants",
        "/admin/v1;x/tenants",
        "/admin/v1/tenants;x",
    ] {
        assert_eq!(raw_status(&app, &get(target)).await, 404, "{target}");
    }
}

const LOCAL: World = World {
    tenant: "acme",
    connection: "pw",
    client: "local-app",
    scope: "openid email",
};

/// A local-account form that names its pending login twice is refused
/// (`request.duplicate_parameter`): the edge's rate limiting reads the
/// first `login` a sign-in page names (the one the browser holds the
/// binding of), and the handler read the last one.
#[tokio::test]
async fn a_local_form_naming_a_field_twice_is_refused() {
    let app = Gateway::default().spawn().await;
    LOCAL.create(&app, "Acme Corp", "acme.example").await;
    let mut browser = Browser::new();
    let page = LOCAL.start(&app, &mut browser, &pkce()).await;
    let mut form = page.form(None);
    form.set("email", "grace@acme.example");
    form.set("password", "Tangerine-Orbit-42");
    let login = form.field("login").unwrap().to_owned();
    form.fields.push(("login".into(), format!("{login}x")));
    let refused = browser.submit(&page, &form).await;
    assert_reason(&refused, 400, "request.duplicate_parameter");

    // A page's query likewise.
    let mut url = page.url.clone();
    url.query_pairs_mut().append_pair("login", "another");
    let refused = browser.get(&url).await;
    assert_reason(&refused, 400, "request.duplicate_parameter");
}

/// The dev IdP's callback names its pending login in `state` once: twice
/// is refused, as the OIDC callback refuses it.
#[tokio::test]
async fn a_dev_callback_naming_its_state_twice_is_refused() {
    let app = dev_app().await;
    let mut browser = Browser::new();
    let page = browser
        .get(&app.url("/dev/demo/dev/callback?state=one&code=c&state=two"))
        .await;
    assert_reason(&page, 400, "request.duplicate_parameter");
}

/// The token, revocation and introspection endpoints take a form body in
/// UTF-8 only (RFC 6749 §3.2, appendix B): JSON, `multipart/form-data`, no
/// content type or another charset get `invalid_request` in RFC 6749 JSON
/// (`request.not_form`, `request.charset_unsupported`), not a bare 415, and
/// a form sent as UTF-8 (with or without saying so) is served.
#[tokio::test]
async fn token_endpoints_take_only_a_utf8_form() {
    let (logs, _capture) = Captured::start();
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        rp.client_id, rp.secret
    );
    let json =
        serde_json::json!({"grant_type": "client_credentials", "client_id": rp.client_id, "client_secret": rp.secret})
            .to_string();
    let multipart = format!(
        "--b\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nclient_credentials\r\n--b\r\nContent-Disposition: form-data; name=\"client_id\"\r\n\r\n{}\r\n--b--\r\n",
        rp.client_id
    );
    let send = |path: &'static str, content_type: Option<&'static str>, body: String| {
        let app = &app;
        async move {
            let mut req = app.client.post(app.url(path)).body(body);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    for path in ["/token", "/revoke", "/introspect"] {
        for (content_type, body, reason) in [
            (Some("application/json"), json.clone(), "request.not_form"),
            (
                Some("multipart/form-data; boundary=b"),
                multipart.clone(),
                "request.not_form",
            ),
            (None, form.clone(), "request.not_form"),
            (
                Some("application/x-www-form-urlencoded-but-not"),
                form.clone(),
                "request.not_form",
            ),
            (
                Some("application/x-www-form-urlencoded; charset=iso-8859-1"),
                form.clone(),
                "request.charset_unsupported",
            ),
        ] {
            let before = logs.with_reason(reason).len();
            let (status, answer) = send(path, content_type, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {content_type:?}: {answer}");
            assert_eq!(answer["error"], "invalid_request", "{path} {content_type:?}: {answer}");
            assert_eq!(
                logs.with_reason(reason).len(),
                before + 1,
                "{path} {content_type:?}: no {reason}"
            );
        }
    }
    // A UTF-8 form, said or not, reaches the grant (this app has no API to
    // grant a client-credentials token for: an OAuth answer of the grant's).
    for content_type in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=\"UTF-8\"",
    ] {
        let (status, answer) = send("/token", Some(content_type), form.clone()).await;
        assert_ne!(answer["error"], "invalid_request", "{content_type}: {status} {answer}");
    }
}

/// No request header chooses a URL: a sign-in sent to the IdP with a
/// forged `Host`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded`
/// is redirected from the configured public URL.
#[tokio::test]
async fn forged_host_headers_choose_no_redirect() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let url = crate::revocation::authorize_url(&app, &rp, "demo", "v".repeat(43).as_str());
    let resp = app
        .client
        .get(url)
        .header("Host", "evil.example")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Forwarded-Proto", "https")
        .header("Forwarded", "host=evil.example;proto=https")
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.text().await.unwrap();
    assert!(
        !location.contains("evil.example") && !body.contains("evil.example"),
        "{location} {body}"
    );
    assert!(location.starts_with(app.base.as_str()), "{location}");
}

/// Held before, now tested: an authorization request (query or form), an
/// OIDC callback (`code`, `state`, `iss`), the SAML ACS (`SAMLResponse`,
/// `RelayState`) and the token, revocation and introspection requests
/// that name a parameter twice are refused whole, each with its reason
/// (RFC 6749 §3.1, §3.2), never served from one copy.
#[tokio::test]
async fn a_parameter_named_twice_is_refused_at_every_oauth_and_idp_endpoint() {
    let (logs, _capture) = Captured::start();
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let page = |resp: reqwest::Response| async move {
        let status = resp.status();
        (status, resp.text().await.unwrap())
    };
    let assert_page = |(status, body): (StatusCode, String), reason: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}: {body}");
        assert!(body.contains(&format!("<code>{reason}</code>")), "{reason}: {body}");
    };

    let mut url = crate::revocation::authorize_url(&app, &rp, "demo", "v".repeat(43).as_str());
    let query = url.query().unwrap().to_owned();
    url.set_query(Some(&format!("{query}&tenant=other")));
    assert_page(
        page(app.client.get(url).send().await.unwrap()).await,
        "authorize.duplicate_parameter",
    );
    let posted = app
        .client
        .post(app.url("/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("{query}&client_id=other"))
        .send()
        .await
        .unwrap();
    assert_page(page(posted).await, "authorize.duplicate_parameter");

    for q in [
        "code=a&state=s&state=t",
        "code=a&code=b&state=s",
        "code=a&state=s&iss=x&iss=y",
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/oidc/demo/dev/callback?{q}")))
            .send()
            .await
            .unwrap();
        assert_page(page(resp).await, "callback.duplicate_parameter");
    }
    for body in [
        "SAMLResponse=a&SAMLResponse=b&RelayState=r",
        "SAMLResponse=a&RelayState=r&RelayState=s",
    ] {
        let resp = app
            .client
            .post(app.url("/saml/demo/dev/acs"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_page(page(resp).await, "saml.duplicate_field");
    }

    let creds = format!("client_id={}&client_secret={}", rp.client_id, rp.secret);
    for (path, body) in [
        (
            "/token",
            format!("grant_type=client_credentials&{creds}&client_id={}", rp.client_id),
        ),
        (
            "/token",
            format!("grant_type=refresh_token&refresh_token=a&refresh_token=b&{creds}"),
        ),
        (
            "/token",
            format!("grant_type=client_credentials&grant_type=refresh_token&{creds}"),
        ),
        ("/revoke", format!("token=a&token=b&{creds}")),
        ("/introspect", format!("token=a&{creds}&client_secret=x")),
    ] {
        let before = logs.with_reason("request.duplicate_parameter").len();
        let resp = app
            .client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request", "{path} {body}: {answer}");
        assert_eq!(
            logs.with_reason("request.duplicate_parameter").len(),
            before + 1,
            "{path} {body}"
        );
    }
}

/// What a single-page app calls from its own origin (discovery, JWKS,
/// token, userinfo, revocation) answers any origin, its errors and its
/// preflight included (`Access-Control-Allow-Origin: *`, never with
/// credentials); the admin API, `/authorize`, the portal, the sign-in
/// pages and introspection answer no origin, not even a preflight.
#[tokio::test]
async fn only_the_endpoints_for_single_page_apps_answer_another_origin() {
    let app = dev_app().await;
    let rp = register(&app, "app1").await;
    let origin = "https://spa.example";
    let allowed = |resp: &reqwest::Response| {
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        rp.client_id, rp.secret
    );
    for (method, path) in [
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/jwks"),
        ("POST", "/token"),
        ("GET", "/userinfo"),
        ("POST", "/userinfo"),
        ("POST", "/revoke"),
    ] {
        let req = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .header("origin", origin);
        let req = if method == "POST" {
            req.header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone())
        } else {
            req
        };
        let resp = req.send().await.unwrap();
        assert_eq!(
            allowed(&resp).as_deref(),
            Some("*"),
            "{method} {path}: {}",
            resp.status()
        );
        assert!(resp.headers().get("access-control-allow-credentials").is_none());
        let preflight = app
            .client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization, content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(allowed(&preflight).as_deref(), Some("*"), "{path}");
        let methods = preflight.headers()["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains(method), "{path}: {methods}");
        let headers = preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{path}: {headers}"
        );
    }
    let authorize = crate::revocation::authorize_url(&app, &rp, "demo", "v".repeat(43).as_str());
    for url in [
        app.url("/admin/v1/tenants"),
        app.url("/admin/v1/openapi.json"),
        authorize,
        app.url("/introspect"),
        app.url("/portal"),
        app.url("/setup/x"),
        app.url("/logout"),
        app.url("/local/demo/dev/sign-in"),
        app.url("/mfa/demo/dev"),
    ] {
        let resp = app
            .client
            .get(url.clone())
            .bearer_auth(&app.admin_token)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(allowed(&resp), None, "{url}");
        let preflight = app
            .client
            .request(reqwest::Method::OPTIONS, url.clone())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(allowed(&preflight), None, "{url}");
        assert_ne!(preflight.status(), StatusCode::NO_CONTENT, "{url}");
    }
}

/// The edge's own refusals on the endpoints for single-page apps (a 413
/// for an oversized body, a 429 over the rate limit) are readable from any
/// origin, `Retry-After` included, so an app learns why and when to come
/// back; the same refusals elsewhere stay unreadable.
#[tokio::test]
async fn the_edges_own_refusals_on_the_endpoints_for_single_page_apps_are_readable_from_any_origin() {
    let origin = "https://spa.example";
    let cors = |resp: &reqwest::Response| {
        let h = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        (h("access-control-allow-origin"), h("access-control-expose-headers"))
    };
    let app = dev_app().await;
    let big = "x=".to_owned() + &"a".repeat(64 * 1024);
    for (path, readable) in [("/token", true), ("/revoke", true), ("/introspect", false)] {
        let resp = app
            .client
            .post(app.url(path))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let (allow, _) = cors(&resp);
        assert_eq!(allow.as_deref(), readable.then_some("*"), "{path}");
    }

    let app = crate::support::app::spawn_app(crate::support::app::AppOptions {
        dev: true,
        tweak: Some(|s| {
            s.throttle.token.per_ip = 1;
            s.throttle.token.window_secs = 60;
        }),
        ..Default::default()
    })
    .await;
    let post = |path: &str| {
        app.client
            .post(app.url(path))
            .header("origin", origin)
            .form(&[("grant_type", "client_credentials"), ("client_id", "nobody")])
            .send()
    };
    assert_eq!(post("/token").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let spent = post("/token").await.unwrap();
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(spent.headers().contains_key("retry-after"));
    let (allow, expose) = cors(&spent);
    assert_eq!(allow.as_deref(), Some("*"));
    let expose = expose.unwrap_or_default().to_ascii_lowercase();
    assert!(
        expose.contains("retry-after") && expose.contains("www-authenticate"),
        "{expose}"
    );
    // The same bucket spent on introspection, for resource servers only.
    let spent = post("/introspect").await.unwrap();
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(cors(&spent), (None, None));
}
