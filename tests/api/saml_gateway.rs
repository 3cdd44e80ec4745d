//! SAML through the gateway's real HTTP ACS, over a real Redis: replay across
//! replicas, IdP-initiated on and off (confirmed by the person; login CSRF
//! refused), a tampered RelayState, another tenant's assertion, and the
//! session cookie's attributes. Responses are signed by signxml
//! (tests/peers/saml/craft.py) with the key whose certificate is in the
//! metadata the admin registered.

use base64::Engine as _;
use chrono::Duration;
use portcullis::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::Read as _;
use url::Url;

use crate::saml_common::{attr_value, confirm_unsolicited, peer};
use crate::saml_crafted::{now, ts};
use crate::support::admin::RegisteredClient;
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::{Browser, Exchange};
use crate::support::gateway::spawn_with_public_url;
use crate::support::redis;

const IDP_ENTITY: &str = "https://idp.gateway.test/entity";
const IDP_HOST: &str = "idp.gateway.test";
const APP_ID: &str = "gw-app";
const APP_CB: &str = "https://app.example.test/callback";
const EMAIL: &str = "ada@acme.test";
const COOKIE: &str = "portcullis_session";
/// The browser's login bindings (`http/binding.rs`).
const LOGINS_COOKIE: &str = "portcullis_session_logins";
/// The user message of `saml.replay` (what an app sees in `error_description`).
const REPLAY_MESSAGE: &str = "This sign-in response was already used. Please sign in again.";

/// The IdP: a key pair made by craft.py, its metadata, and responses it signs.
struct Idp {
    idp: Value,
    metadata: String,
}

impl Idp {
    fn new() -> Self {
        let sso = format!("https://{IDP_HOST}/sso");
        let out = peer(
            "craft.py",
            &json!({ "idp": { "entity_id": IDP_ENTITY, "sso": sso }, "cases": [] }),
        );
        Self {
            idp: out["idp"].clone(),
            metadata: out["metadata"].as_str().unwrap().to_owned(),
        }
    }

    /// A signed Response for the connection `conn` (the admin API's 201
    /// answer): audience, recipient and destination are its SP's.
    fn response(&self, conn: &Value, in_response_to: Option<&str>) -> String {
        self.response_for(conn, in_response_to, EMAIL)
    }

    /// Like [`Idp::response`], for the user `email`.
    fn response_for(&self, conn: &Value, in_response_to: Option<&str>, email: &str) -> String {
        self.response_with(
            conn,
            in_response_to,
            email,
            "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        )
    }

    /// Like [`Idp::response_for`], authenticated with the context class `class_ref`.
    fn response_with(&self, conn: &Value, in_response_to: Option<&str>, email: &str, class_ref: &str) -> String {
        self.response_case(conn, in_response_to, email, class_ref, json!({}))
    }

    /// Like [`Idp::response_with`], with the case's fields in `changes`
    /// (craft.py's names) replaced.
    fn response_case(
        &self,
        conn: &Value,
        in_response_to: Option<&str>,
        email: &str,
        class_ref: &str,
        changes: Value,
    ) -> String {
        let mut case = json!({
            "authn_context_class_ref": class_ref,
            "name": "r",
            "sp_entity_id": conn["sp_entity_id"],
            "acs_url": conn["acs_url"],
            "in_response_to": in_response_to,
            "name_id": email,
            "attributes": { "email": [email], "firstName": ["Ada"], "lastName": ["Lovelace"] },
            "issue_instant": ts(Duration::zero()),
            "not_before": ts(Duration::minutes(-1)),
            "not_on_or_after": ts(Duration::minutes(5)),
            "scd_not_on_or_after": ts(Duration::minutes(5)),
            "sign": "assertion",
        });
        for (k, v) in changes.as_object().into_iter().flatten() {
            case[k] = v.clone();
        }
        let out = peer("craft.py", &json!({ "idp": self.idp, "cases": [case] }));
        out["responses"]["r"].as_str().unwrap().to_owned()
    }
}

fn options(clock: &ManualClock) -> AppOptions {
    AppOptions {
        redis_url: Some(redis::url()),
        redis_prefix: Some(redis::prefix()),
        clock: Some(clock.clone()),
        ..AppOptions::default()
    }
}

/// A gateway on Redis whose clock matches the crafted responses' instants.
async fn gateway() -> TestApp {
    spawn_app(options(&ManualClock::at(now()))).await
}

async fn register_app(app: &TestApp) -> RegisteredClient {
    let cb = Url::parse(APP_CB).unwrap();
    app.create_client(APP_ID, "Gateway test app", &[&cb], false).await
}

/// A SAML connection to `idp`; IdP-initiated logins land in the test app when on.
async fn saml_connection(app: &TestApp, tenant: &str, id: &str, idp: &Idp, idp_initiated: bool) -> Value {
    let mut body = json!({ "id": id, "metadata_xml": idp.metadata });
    if idp_initiated {
        body["allow_idp_initiated"] = json!(true);
        body["default_client_id"] = json!(APP_ID);
        body["redirect_uri"] = json!(APP_CB);
    }
    app.create_saml_connection(tenant, body).await
}

/// A gateway with tenant acme, the test app and the SAML connection `corp`
/// to a fresh IdP, which lands IdP-initiated sign-ins in the app.
async fn acme_idp_initiated() -> (TestApp, RegisteredClient, Idp, Value) {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;
    (app, client, idp, conn)
}

/// What the gateway answered to an ACS post.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    location: Option<Url>,
    content_type: String,
    set_cookies: Vec<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    /// The Location's query parameters.
    fn param(&self, name: &str) -> Option<String> {
        self.location
            .as_ref()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The continuation URL, when this is the ACS's 303 to it.
    fn continue_url(&self) -> Option<Url> {
        if self.status != StatusCode::SEE_OTHER {
            return None;
        }
        self.location.clone().filter(|l| l.path().ends_with("/continue"))
    }

    /// Asserts the ACS's answer: a 303 to the same-site continuation, and no
    /// cookie set; returns the continuation URL.
    fn expect_continue(&self) -> Url {
        assert!(
            self.set_cookies.is_empty(),
            "the ACS touched the session cookie: {self:?}"
        );
        self.continue_url()
            .unwrap_or_else(|| panic!("no 303 to the continuation in {self:?}"))
    }

    /// The code, when this is a redirect to the app carrying one.
    fn code(&self) -> Option<String> {
        let to_app = self
            .location
            .as_ref()
            .is_some_and(|l| l.as_str().starts_with(&format!("{APP_CB}?")));
        if to_app {
            self.param("code")
        } else {
            None
        }
    }

    /// Asserts a 303 to the app's redirect URI with a code; returns the code.
    fn expect_code(&self) -> String {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{self:?}");
        self.code().unwrap_or_else(|| panic!("no code for the app in {self:?}"))
    }

    /// Asserts a readable 4xx HTML page showing `reason`, and no redirect.
    fn expect_page(&self, status: u16, reason: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert!(self.content_type.starts_with("text/html"), "{self:?}");
        assert!(self.location.is_none(), "{self:?}");
        assert!(
            self.body.contains(&format!("<code>{reason}</code>")),
            "reason {reason} not on the page: {self:?}"
        );
    }

    /// Asserts a refusal sent to the app: `error=access_denied`, no code.
    fn expect_app_error(&self) -> String {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{self:?}");
        assert!(
            self.location
                .as_ref()
                .is_some_and(|l| l.as_str().starts_with(&format!("{APP_CB}?"))),
            "{self:?}"
        );
        assert_eq!(self.param("code"), None, "{self:?}");
        assert_eq!(self.param("error").as_deref(), Some("access_denied"), "{self:?}");
        self.param("error_description").unwrap_or_default()
    }

    /// The session cookie's `Set-Cookie` value.
    fn session_cookie(&self) -> String {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{COOKIE}=")))
            .cloned()
            .unwrap_or_else(|| panic!("no {COOKIE} cookie set: {self:?}"))
    }
}

fn from_exchange(ex: Exchange) -> Answer {
    Answer {
        status: ex.status,
        location: ex
            .headers
            .get(reqwest::header::LOCATION)
            .map(|v| Url::parse(v.to_str().unwrap()).unwrap()),
        content_type: ex
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        set_cookies: ex.set_cookies(),
        headers: ex.headers,
        body: ex.body,
    }
}

/// The page an IdP's auto-submitted form is on (the initiator of its POST).
fn idp_page() -> Url {
    Url::parse(&format!("https://{IDP_HOST}/sso")).unwrap()
}

/// Posts `xml` to `acs` from the IdP's page in `browser` (a cross-site POST,
/// as the HTTP-POST binding makes it), without following the redirect.
async fn post_acs_in(browser: &mut Browser, acs: &Url, xml: &str, relay_state: Option<&str>, from: &Url) -> Answer {
    let mut form = vec![(
        "SAMLResponse".to_owned(),
        base64::engine::general_purpose::STANDARD.encode(xml),
    )];
    if let Some(r) = relay_state {
        form.push(("RelayState".to_owned(), r.to_owned()));
    }
    let ex = browser.send(reqwest::Method::POST, acs, Some(&form), Some(from)).await;
    assert!(
        ex.cookies_sent.is_empty(),
        "a cross-site POST carried cookies {:?}",
        ex.cookies_sent
    );
    from_exchange(ex)
}

/// Follows the ACS's 303 in `browser` (a top-level GET at the end of a
/// redirect chain that started on `from`).
async fn continue_in(browser: &mut Browser, acs_answer: &Answer, from: &Url) -> Answer {
    let url = acs_answer.expect_continue();
    from_exchange(browser.send(reqwest::Method::GET, &url, None, Some(from)).await)
}

/// Posts `fields` to `action` in `browser` from a page at `from` (the
/// confirmation page itself, or an attacker's page), without following the
/// redirect.
async fn post_form_in(browser: &mut Browser, action: &Url, fields: &[(String, String)], from: &Url) -> Answer {
    from_exchange(
        browser
            .send(reqwest::Method::POST, action, Some(fields), Some(from))
            .await,
    )
}

/// Follows an IdP-initiated ACS answer's 303 in `browser`, which the
/// continuation asks first (signed in nowhere or as someone else), and
/// continues on the page, a same-site POST.
async fn continue_in_confirmed(browser: &mut Browser, acs_answer: &Answer, from: &Url) -> Answer {
    let ask = continue_in(browser, acs_answer, from).await;
    let (action, fields) = confirmation_form(&ask, "confirm");
    post_form_in(browser, &action, &fields, &action).await
}

/// Follows the ACS's 303 with a cookie-less client (a browser that has no
/// session at Portcullis).
async fn continue_with(client: &reqwest::Client, acs_answer: &Answer) -> Answer {
    let url = acs_answer.expect_continue();
    answer(client.get(url).send().await.unwrap()).await
}

/// Follows an IdP-initiated ACS answer's 303 with a client that has no
/// session at Portcullis, as the person would: the continuation asks, and
/// the person continues on the page (with the session cookie it set).
async fn continue_confirmed(client: &reqwest::Client, acs_answer: &Answer) -> Answer {
    let ask = continue_with(client, acs_answer).await;
    confirmation_form(&ask, "confirm");
    answer(confirm_unsolicited(client, &ask.set_cookies, &ask.body).await).await
}

async fn answer(resp: reqwest::Response) -> Answer {
    let headers = resp.headers().clone();
    let status = resp.status();
    Answer {
        status,
        location: headers
            .get(reqwest::header::LOCATION)
            .map(|v| Url::parse(v.to_str().unwrap()).unwrap()),
        content_type: headers
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        set_cookies: headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
        headers,
        body: resp.text().await.unwrap(),
    }
}

/// Posts `xml` to `acs` as the HTTP-POST binding does, without following redirects.
async fn post_acs(client: &reqwest::Client, acs: &Url, xml: &str, relay_state: Option<&str>) -> Answer {
    let mut form = vec![("SAMLResponse", base64::engine::general_purpose::STANDARD.encode(xml))];
    if let Some(r) = relay_state {
        form.push(("RelayState", r.to_owned()));
    }
    answer(client.post(acs.clone()).form(&form).send().await.unwrap()).await
}

fn acs(conn: &Value) -> Url {
    Url::parse(conn["acs_url"].as_str().unwrap()).unwrap()
}

/// Redeems `code` at `token_url`; returns the ID token's claims.
async fn redeem(http: &reqwest::Client, token_url: Url, client: &RegisteredClient, code: &str) -> Value {
    let resp = http
        .post(token_url)
        .basic_auth(&client.client_id, client.client_secret.as_deref())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", APP_CB),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    assert!(tokens["access_token"].is_string(), "{tokens}");
    let id_token = tokens["id_token"].as_str().unwrap();
    let payload = id_token.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn assert_signed_in(claims: &Value, tenant: &str) {
    assert_eq!(claims["tenant"], tenant, "{claims}");
    assert_eq!(claims["email"], EMAIL, "{claims}");
}

/// Starts an SP-initiated login at `/authorize` in a fresh scripted browser
/// and stops where the gateway sends it to the IdP; returns the
/// AuthnRequest's ID and the RelayState.
async fn start_login(app: &TestApp, tenant: &str, conn: &Value, state: &str) -> (String, String, Browser) {
    let mut browser = Browser::new();
    let (id, relay) = start_login_in(&mut browser, app, tenant, conn, state).await;
    (id, relay, browser)
}

/// Like [`start_login`], in `browser`.
async fn start_login_in(
    browser: &mut Browser,
    app: &TestApp,
    tenant: &str,
    conn: &Value,
    state: &str,
) -> (String, String) {
    let (_, id, relay) = start_login_xml(browser, app, tenant, conn, state).await;
    (id, relay)
}

/// Like [`start_login_in`]; also returns the AuthnRequest's XML.
async fn start_login_xml(
    browser: &mut Browser,
    app: &TestApp,
    tenant: &str,
    conn: &Value,
    state: &str,
) -> (String, String, String) {
    let mut authorize = app.url("/authorize");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", APP_ID)
        .append_pair("redirect_uri", APP_CB)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("state", state)
        .append_pair("tenant", tenant)
        .append_pair("connection", conn["id"].as_str().unwrap());
    let at_idp = browser
        .get_until(&authorize, &|u: &Url| u.host_str() == Some(IDP_HOST))
        .await
        .stopped();
    let q = |k: &str| {
        at_idp
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {k} in {at_idp}"))
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(q("SAMLRequest"))
        .unwrap();
    let mut request = String::new();
    flate2::read::DeflateDecoder::new(&raw[..])
        .read_to_string(&mut request)
        .unwrap();
    assert_eq!(
        attr_value(&request, "AssertionConsumerServiceURL").as_deref(),
        conn["acs_url"].as_str(),
        "{request}"
    );
    let id = attr_value(&request, "ID").unwrap();
    (request, id, q("RelayState"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_response_posted_ten_times_at_once_across_two_replicas_signs_in_exactly_once() {
    let clock = ManualClock::at(now());
    let opts = options(&clock);
    let a = spawn_app(opts.clone()).await;
    // The second replica shares Redis, the prefix and the public URL.
    let public = a.base.to_string();
    let b = spawn_with_public_url(opts, move |_| public).await;
    a.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&a).await;
    let idp = Idp::new();
    let conn = saml_connection(&a, "acme", "corp", &idp, true).await;
    let acs_path = acs(&conn).path().to_owned();

    // Replica B knows the connection and derives the same SP identity.
    let b_metadata = a.client.get(b.at("/saml/acme/corp/metadata")).send().await.unwrap();
    assert_eq!(b_metadata.status(), 200);
    let b_metadata = b_metadata.text().await.unwrap();
    assert!(b_metadata.contains(conn["acs_url"].as_str().unwrap()), "{b_metadata}");
    assert!(
        b_metadata.contains(conn["sp_entity_id"].as_str().unwrap()),
        "{b_metadata}"
    );

    let xml = idp.response(&conn, None);
    let targets: Vec<(char, Url)> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                ('a', a.url(&acs_path))
            } else {
                ('b', b.at(&acs_path))
            }
        })
        .collect();
    let mut posts = tokio::task::JoinSet::new();
    for (replica, url) in targets {
        let (http, xml) = (a.client.clone(), xml.clone());
        posts.spawn(async move { (replica, post_acs(&http, &url, &xml, None).await) });
    }
    let answers = posts.join_all().await;

    let (winners, refused): (Vec<_>, Vec<_>) = answers.iter().partition(|(_, ans)| ans.continue_url().is_some());
    assert_eq!(winners.len(), 1, "{answers:#?}");
    assert_eq!(refused.len(), 9, "{answers:#?}");
    for (_, ans) in &refused {
        assert_eq!(ans.code(), None, "{ans:?}");
        // Refused as a replay: as a page, or told to the default app.
        if ans.location.is_some() {
            assert_eq!(ans.expect_app_error(), REPLAY_MESSAGE, "{ans:?}");
        } else {
            ans.expect_page(400, "saml.replay");
        }
    }
    let (won_at, winner) = winners[0];
    // The browser follows to the continuation (IdP-initiated: unbound, so
    // the person confirms first).
    let done = continue_confirmed(&a.client, winner).await;
    let code = done.expect_code();
    assert_eq!(done.param("state"), None, "{done:?}");

    // Redeemed at the other replica: the code lives in the shared store.
    let token_url = if *won_at == 'a' {
        b.at("/token")
    } else {
        a.url("/token")
    };
    let claims = redeem(&a.client, token_url, &client, &code).await;
    assert_signed_in(&claims, "acme");
    assert_eq!(claims["iss"], a.issuer(), "{claims}");
}

#[tokio::test]
async fn idp_initiated_response_lands_in_the_default_app_with_a_fresh_code_and_no_state() {
    let (app, client, idp, conn) = acme_idp_initiated().await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    // A browser signed in nowhere is asked first (no browser started this
    // sign-in), and lands in the app once the person continues.
    let ask = continue_with(&app.client, &ans).await;
    confirmation_form(&ask, "confirm");
    assert!(ask.body.contains(EMAIL), "{ask:?}");
    let ans = answer(confirm_unsolicited(&app.client, &ask.set_cookies, &ask.body).await).await;
    let code = ans.expect_code();
    assert_eq!(ans.param("state"), None, "{ans:?}");
    assert_eq!(ans.param("iss").as_deref(), Some(app.issuer().as_str()), "{ans:?}");
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
}

/// What waits in the store between the ACS and its continuation is what the
/// continuation needs: the mapped profile, not every attribute the IdP sent
/// (a Response with many attributes or groups would otherwise carry them all
/// through Redis); the sign-in still completes from it.
#[tokio::test]
async fn the_continuation_keeps_the_mapped_profile_not_every_attribute_sent() {
    let (app, client, idp, conn) = acme_idp_initiated().await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    let handle = ans.expect_continue();
    let handle = handle
        .query_pairs()
        .find(|(k, _)| k == "handle")
        .map(|(_, v)| v.into_owned())
        .expect("the continuation's handle");
    let key = portcullis::store::Key::tenant(
        "acme",
        "login",
        format!("continue:{}", portcullis::tokens::sha256_base64url(handle.as_bytes())),
    );
    let kept: Value = serde_json::from_slice(&app.state.store.get(&key).await.unwrap().expect("kept")).unwrap();
    let identity = &kept["identity"];
    assert_eq!(identity["email"], json!(EMAIL), "{kept}");
    assert_eq!(identity["given_name"], json!("Ada"), "{kept}");
    assert_eq!(identity["raw"], json!({}), "every attribute as sent was kept: {kept}");

    let ans = continue_confirmed(&app.client, &ans).await;
    let code = ans.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
}

#[tokio::test]
async fn idp_initiated_response_is_refused_with_a_readable_page_when_the_connection_does_not_allow_it() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp-off", &idp, false).await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    assert_eq!(ans.code(), None, "{ans:?}");
    // The broker refuses before the connector would (`saml.unsolicited_not_allowed`).
    ans.expect_page(400, "callback.unsolicited");
}

#[tokio::test]
async fn sp_initiated_response_with_a_tampered_relay_state_is_refused_and_with_the_original_succeeds() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    let (request_id, relay_state, mut browser) = start_login(&app, "acme", &conn, "st-1").await;
    let xml = idp.response(&conn, Some(&request_id));

    // One character changed, and a suffix added: neither names the login.
    let mut flipped = relay_state.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    for tampered in [flipped, format!("{relay_state}x")] {
        let ans = post_acs(&app.client, &acs(&conn), &xml, Some(&tampered)).await;
        assert_eq!(ans.code(), None, "{ans:?}");
        ans.expect_page(400, "callback.unknown_login");
    }

    // The very same Response with the original RelayState is good, finished
    // in the browser that started the login.
    let ans = post_acs_in(&mut browser, &acs(&conn), &xml, Some(&relay_state), &idp_page()).await;
    let ans = continue_in(&mut browser, &ans, &idp_page()).await;
    let code = ans.expect_code();
    assert_eq!(ans.param("state").as_deref(), Some("st-1"), "{ans:?}");
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
}

#[tokio::test]
async fn a_response_issued_for_another_tenants_connection_to_the_same_idp_is_refused() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    app.create_tenant("globex", "Globex", &["globex.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn_a = saml_connection(&app, "acme", "corp", &idp, false).await;
    let conn_b = saml_connection(&app, "globex", "corp", &idp, false).await;
    assert_ne!(conn_a["sp_entity_id"], conn_b["sp_entity_id"]);

    // A login started at tenant B, answered with an assertion for A's SP.
    let (request_id, relay_state, _) = start_login(&app, "globex", &conn_b, "st-b").await;
    let for_a = idp.response(&conn_a, Some(&request_id));
    let ans = post_acs(&app.client, &acs(&conn_b), &for_a, Some(&relay_state)).await;
    assert_eq!(ans.code(), None, "{ans:?}");
    ans.expect_app_error();
    assert_eq!(ans.param("state").as_deref(), Some("st-b"), "{ans:?}");

    // The control: the same IdP's answer for B's own SP signs in at B.
    let (request_id, relay_state, mut browser) = start_login(&app, "globex", &conn_b, "st-b2").await;
    let for_b = idp.response(&conn_b, Some(&request_id));
    let ans = post_acs_in(&mut browser, &acs(&conn_b), &for_b, Some(&relay_state), &idp_page()).await;
    let ans = continue_in(&mut browser, &ans, &idp_page()).await;
    let code = ans.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "globex");
}

/// The same IdP (one key, one entity id) configured as two connections of
/// one tenant, the second taking IdP-initiated sign-ins: a Response the
/// IdP signed for the first connection is refused at the second's ACS,
/// whatever it names, each time for its own reason. With the second's own
/// pending login: its Destination is the first's ACS; with the first's
/// pending login (its RelayState): that login is not the second's
/// (`callback.login_mismatch`); sent IdP-initiated without a Destination:
/// its signed Recipient is the first's ACS; and one whose Recipient is the
/// second's ACS but whose Audience is the first's SP entity id is not for
/// the second's SP either. So no answer counts at two connections, though
/// each keeps its own replay cache. The control: the first connection's
/// own answer signs in there.
#[tokio::test]
async fn a_response_for_one_connection_is_refused_at_another_connection_of_the_same_idp() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let one = saml_connection(&app, "acme", "one", &idp, false).await;
    let two = saml_connection(&app, "acme", "two", &idp, true).await;
    assert_ne!(one["sp_entity_id"], two["sp_entity_id"]);
    assert_ne!(one["acs_url"], two["acs_url"]);
    let class = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport";

    // An answer to the first connection's login, at the second's ACS with
    // the second's own login: sent back to the second's app, no code.
    let (request_one, relay_one, _) = start_login(&app, "acme", &one, "st-1").await;
    let (_, relay_two, _) = start_login(&app, "acme", &two, "st-2").await;
    let for_one = idp.response(&one, Some(&request_one));
    let ans = post_acs(&app.client, &acs(&two), &for_one, Some(&relay_two)).await;
    ans.expect_app_error();
    assert_eq!(ans.param("state").as_deref(), Some("st-2"), "{ans:?}");
    // ... and with the first connection's login.
    let ans = post_acs(&app.client, &acs(&two), &for_one, Some(&relay_one)).await;
    ans.expect_page(400, "callback.login_mismatch");

    // IdP-initiated answers for the first connection, at the second's ACS.
    let no_destination = json!({ "destination": null });
    let for_one = idp.response_case(&one, None, EMAIL, class, no_destination.clone());
    let ans = post_acs(&app.client, &acs(&two), &for_one, None).await;
    ans.expect_app_error();
    let mut audience_one = no_destination;
    audience_one["acs_url"] = two["acs_url"].clone();
    let for_one = idp.response_case(&one, None, EMAIL, class, audience_one);
    let ans = post_acs(&app.client, &acs(&two), &for_one, None).await;
    ans.expect_app_error();

    let mut reasons: Vec<String> = app
        .tenant_audit("acme", "signin.failed")
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "callback.login_mismatch",
            "saml.audience_mismatch",
            "saml.destination_mismatch",
            "saml.recipient_mismatch",
        ]
    );

    // The control: the first connection's own answer signs in there.
    let (request_one, relay_one, mut browser) = start_login(&app, "acme", &one, "st-3").await;
    let for_one = idp.response(&one, Some(&request_one));
    let ans = post_acs_in(&mut browser, &acs(&one), &for_one, Some(&relay_one), &idp_page()).await;
    let ans = continue_in(&mut browser, &ans, &idp_page()).await;
    let code = ans.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
}

fn cookie_attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn the_acs_sets_no_cookie_and_the_continuation_sets_an_http_only_same_site_lax_one_without_secure_on_http() {
    let app = gateway().await;
    assert_eq!(app.base.scheme(), "http");
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    assert!(ans.set_cookies.is_empty(), "{ans:?}");
    // The confirmation page sets it (its CSRF token), and the sign-in sets
    // it again under a fresh id.
    let ask = continue_with(&app.client, &ans).await;
    let ans = answer(confirm_unsolicited(&app.client, &ask.set_cookies, &ask.body).await).await;
    ans.expect_code();
    for set in [ask.session_cookie(), ans.session_cookie()] {
        let attrs = cookie_attributes(&set);
        assert!(attrs.iter().any(|a| a == "httponly"), "{attrs:?}");
        assert!(attrs.iter().any(|a| a == "samesite=lax"), "{attrs:?}");
        assert!(!attrs.iter().any(|a| a == "secure"), "{attrs:?}");
    }
    assert_ne!(
        ask.session_cookie(),
        ans.session_cookie(),
        "the session id is cycled at sign-in"
    );
}

#[tokio::test]
async fn starting_a_sign_in_sets_only_its_binding_cookie_and_each_tab_finishes_with_its_own_entry() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    // What `/authorize` answers: the binding cookie, no session cookie.
    let ans = answer(
        app.client
            .get(authorize_url(&app, "acme", &conn, "attrs"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(ans.status.is_redirection(), "{ans:?}");
    assert_eq!(ans.set_cookies.len(), 1, "{ans:?}");
    assert!(ans.set_cookies[0].starts_with(&format!("{LOGINS_COOKIE}=")), "{ans:?}");
    let attrs = cookie_attributes(&ans.set_cookies[0]);
    for expected in ["httponly", "samesite=lax", "path=/", "max-age=600"] {
        assert!(attrs.iter().any(|a| a == expected), "{expected}: {attrs:?}");
    }
    assert!(!attrs.iter().any(|a| a == "secure"), "{attrs:?}");

    // Two tabs of one browser: both bindings are held, each login finishes
    // with its own, and the last one clears the cookie.
    let mut b = Browser::new();
    let (first_id, first_relay) = start_login_in(&mut b, &app, "acme", &conn, "one").await;
    let (second_id, second_relay) = start_login_in(&mut b, &app, "acme", &conn, "two").await;
    assert_eq!(b.cookie(&app.base, COOKIE), None, "no session before a sign-in");
    let held = b.cookie(&app.base, LOGINS_COOKIE).unwrap();
    assert_eq!(held.split('.').count(), 2, "{held}");

    let xml = idp.response_for(&conn, Some(&second_id), EMAIL);
    let ans = post_acs_in(&mut b, &acs(&conn), &xml, Some(&second_relay), &idp_page()).await;
    continue_in(&mut b, &ans, &idp_page()).await.expect_code();
    let left = b.cookie(&app.base, LOGINS_COOKIE).unwrap();
    assert_eq!(left.split('.').count(), 1, "{left}");
    assert!(
        held.starts_with(&left),
        "the first tab's entry is kept: {held} / {left}"
    );
    assert!(b.cookie(&app.base, COOKIE).is_some(), "signed in: a session");

    let xml = idp.response_for(&conn, Some(&first_id), EMAIL);
    let ans = post_acs_in(&mut b, &acs(&conn), &xml, Some(&first_relay), &idp_page()).await;
    continue_in(&mut b, &ans, &idp_page()).await.expect_code();
    assert_eq!(b.cookie(&app.base, LOGINS_COOKIE), None, "no binding left");
}

/// Before the bindings cookie, a login's binding was kept in the browser's
/// session (field `logins`): a login started on a replica of that version
/// still finishes on this one, and its entry is dropped from the session.
#[tokio::test]
async fn a_login_whose_binding_an_earlier_version_kept_in_the_session_still_finishes() {
    use tower_sessions::session::{Id, Record};
    use tower_sessions::SessionStore;
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    let mut b = Browser::new();
    let (request_id, relay) = start_login_in(&mut b, &app, "acme", &conn, "old").await;
    let held = b.cookie(&app.base, LOGINS_COOKIE).unwrap();
    let (login, secret) = held.split_once(':').unwrap();
    // Rewrite the browser as the earlier version left it: the binding in the
    // session record, no bindings cookie.
    let sessions = portcullis::store::session::StoreSessionStore::new(
        app.state.store.clone(),
        app.state.provider.clock.clone(),
        app.state.session.ttl,
    );
    let mut record = Record {
        id: Id::default(),
        data: [("logins".to_owned(), json!([[login, secret], ["other", "entry"]]))].into(),
        expiry_date: tower_sessions::cookie::time::OffsetDateTime::now_utc()
            + tower_sessions::cookie::time::Duration::hours(1),
    };
    sessions.create(&mut record).await.unwrap();
    b.store_cookie(
        &app.base,
        &format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax", record.id),
    );
    b.store_cookie(&app.base, &format!("{LOGINS_COOKIE}=; Path=/; Max-Age=0"));
    assert_eq!(b.cookie(&app.base, LOGINS_COOKIE), None);

    let xml = idp.response_for(&conn, Some(&request_id), EMAIL);
    let ans = post_acs_in(&mut b, &acs(&conn), &xml, Some(&relay), &idp_page()).await;
    continue_in(&mut b, &ans, &idp_page()).await.expect_code();
    // The session (under a fresh id) keeps only the entry not used.
    let id: Id = b.cookie(&app.base, COOKIE).unwrap().parse().unwrap();
    assert_ne!(id, record.id, "the session id is cycled at sign-in");
    let now = sessions.load(&id).await.unwrap().expect("the session record");
    assert_eq!(now.data["logins"], json!([["other", "entry"]]));
}

#[tokio::test]
async fn session_cookie_is_secure_when_the_public_url_is_https() {
    // The gateway believes it is served over https; the test talks plain
    // http to its listener (a TLS-terminating proxy's view).
    let gw = spawn_with_public_url(
        AppOptions {
            dev: true,
            ..options(&ManualClock::at(now()))
        },
        |port| format!("https://localhost:{port}"),
    )
    .await;
    assert_eq!(gw.app.base.scheme(), "https");
    let ans = answer(gw.app.client.get(gw.at("/demo/login")).send().await.unwrap()).await;
    assert!(ans.status.is_redirection(), "{ans:?}");
    // On https both cookies are `__Host-` cookies: this host only.
    let session = ans
        .set_cookies
        .iter()
        .find(|c| c.starts_with(&format!("__Host-{COOKIE}=")))
        .unwrap_or_else(|| panic!("no __Host- session cookie: {ans:?}"));
    let attrs = cookie_attributes(session);
    assert!(attrs.iter().any(|a| a == "path=/"), "{attrs:?}");
    assert!(!attrs.iter().any(|a| a.starts_with("domain")), "{attrs:?}");
    assert!(attrs.iter().any(|a| a == "secure"), "{attrs:?}");
    assert!(attrs.iter().any(|a| a == "httponly"), "{attrs:?}");
    assert!(attrs.iter().any(|a| a == "samesite=lax"), "{attrs:?}");

    // The demo app's `/authorize` starts a login: its binding cookie too.
    let authorize = ans.location.clone().unwrap();
    let authorize = gw.at(&format!("{}?{}", authorize.path(), authorize.query().unwrap()));
    let ans = answer(gw.app.client.get(authorize).send().await.unwrap()).await;
    assert!(ans.status.is_redirection(), "{ans:?}");
    let binding = ans
        .set_cookies
        .iter()
        .find(|c| c.starts_with(&format!("__Host-{LOGINS_COOKIE}=")))
        .unwrap_or_else(|| panic!("no __Host- binding cookie: {ans:?}"));
    let attrs = cookie_attributes(binding);
    assert!(!attrs.iter().any(|a| a.starts_with("domain")), "{attrs:?}");
    for expected in ["secure", "httponly", "samesite=lax", "path=/"] {
        assert!(attrs.iter().any(|a| a == expected), "{expected}: {attrs:?}");
    }
}

#[tokio::test]
async fn idp_initiated_response_is_refused_when_the_default_app_is_not_allowed_for_the_tenant() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    app.create_tenant("globex", "Globex", &["globex.test"]).await;
    // The default app may only be used with globex, as `/authorize` enforces.
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/clients",
            Some(
                json!({ "client_id": APP_ID, "name": "Globex only", "redirect_uris": [APP_CB],
                         "public": false, "allowed_tenants": ["globex"] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    assert_eq!(
        ans.code(),
        None,
        "an acme sign-in was handed to a globex-only app: {ans:?}"
    );
    assert!(ans.status.is_client_error(), "{ans:?}");
}

/// An attacker's page: where the planted POSTs come from.
fn evil_page() -> Url {
    Url::parse("https://evil.example.test/login-csrf").unwrap()
}

/// The authorization request of the test app for `tenant`/`conn`.
fn authorize_url(app: &TestApp, tenant: &str, conn: &Value, state: &str) -> Url {
    let mut authorize = app.url("/authorize");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", APP_ID)
        .append_pair("redirect_uri", APP_CB)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("state", state)
        .append_pair("tenant", tenant)
        .append_pair("connection", conn["id"].as_str().unwrap());
    authorize
}

/// Signs `browser` in SP-initiated as `email`; returns the ID token claims.
async fn sign_in_sp(
    app: &TestApp,
    idp: &Idp,
    conn: &Value,
    client: &RegisteredClient,
    browser: &mut Browser,
    email: &str,
) -> Value {
    let (request_id, relay_state) = start_login_in(browser, app, "acme", conn, "own").await;
    let xml = idp.response_for(conn, Some(&request_id), email);
    let ans = post_acs_in(browser, &acs(conn), &xml, Some(&relay_state), &idp_page()).await;
    let ans = continue_in(browser, &ans, &idp_page()).await;
    let code = ans.expect_code();
    redeem(&app.client, app.url("/token"), client, &code).await
}

#[tokio::test]
async fn an_attackers_response_auto_posted_from_a_victims_browser_with_its_own_pending_login_signs_nobody_in() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    // The victim has started a sign-in of their own and is at the IdP.
    let (_, _, mut victim) = start_login(&app, "acme", &conn, "victim").await;
    // Starting a sign-in gives the browser its login binding, not a session.
    assert_eq!(victim.cookie(&app.base, COOKIE), None);
    let victim_logins = victim
        .cookie(&app.base, LOGINS_COOKIE)
        .expect("the victim holds the binding of its login");
    // The attacker starts one in their own browser and gets a valid Response
    // for their own account...
    let (request_id, relay_state, _attacker) = start_login(&app, "acme", &conn, "attacker").await;
    let xml = idp.response_for(&conn, Some(&request_id), "mallory@acme.test");
    // ...which their page auto-posts to the ACS from the victim's browser.
    let ans = post_acs_in(&mut victim, &acs(&conn), &xml, Some(&relay_state), &evil_page()).await;
    let done = continue_in(&mut victim, &ans, &evil_page()).await;
    assert_eq!(done.code(), None, "the victim was signed in as the attacker: {done:?}");
    done.expect_page(400, "callback.browser_mismatch");
    assert_eq!(victim.cookie(&app.base, COOKIE), None, "the victim was given a session");
    assert_eq!(
        victim.cookie(&app.base, LOGINS_COOKIE).as_deref(),
        Some(victim_logins.as_str()),
        "the victim's own login binding was touched"
    );
}

/// A bindings cookie planted beside the browser's own (by a sibling domain,
/// with a more specific path, so that it is sent first) binds nothing: a
/// cookie sent twice is trusted in neither copy, and the attacker's
/// Response auto-posted with the attacker's planted binding signs nobody
/// in (`callback.browser_mismatch`).
#[tokio::test]
async fn a_planted_second_bindings_cookie_binds_nothing() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    let (_, _, mut victim) = start_login(&app, "acme", &conn, "victim").await;
    let (request_id, relay_state, attacker) = start_login(&app, "acme", &conn, "attacker").await;
    let planted = attacker
        .cookie(&app.base, LOGINS_COOKIE)
        .expect("the attacker's binding");
    victim.store_cookie(
        &app.base,
        &format!("{LOGINS_COOKIE}={planted}; Path=/saml/; HttpOnly; SameSite=Lax"),
    );
    let xml = idp.response_for(&conn, Some(&request_id), "mallory@acme.test");
    let ans = post_acs_in(&mut victim, &acs(&conn), &xml, Some(&relay_state), &evil_page()).await;
    let done = continue_in(&mut victim, &ans, &evil_page()).await;
    assert_eq!(done.code(), None, "the victim was signed in as the attacker: {done:?}");
    done.expect_page(400, "callback.browser_mismatch");
    assert_eq!(victim.cookie(&app.base, COOKIE), None, "the victim was given a session");
}

#[tokio::test]
async fn an_attackers_response_auto_posted_into_a_signed_in_browser_leaves_its_session_alone() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    let mut victim = Browser::new();
    let own = sign_in_sp(&app, &idp, &conn, &client, &mut victim, EMAIL).await;
    assert_signed_in(&own, "acme");
    let victim_cookie = victim.cookie(&app.base, COOKIE).unwrap();

    let (request_id, relay_state, _attacker) = start_login(&app, "acme", &conn, "attacker").await;
    let xml = idp.response_for(&conn, Some(&request_id), "mallory@acme.test");
    let ans = post_acs_in(&mut victim, &acs(&conn), &xml, Some(&relay_state), &evil_page()).await;
    let done = continue_in(&mut victim, &ans, &evil_page()).await;
    assert_eq!(done.code(), None, "{done:?}");
    done.expect_page(400, "callback.browser_mismatch");
    assert_eq!(
        victim.cookie(&app.base, COOKIE).as_deref(),
        Some(victim_cookie.as_str())
    );

    // The victim's next app sign-in is still the victim, from the SSO session.
    victim.clear_history();
    let back = victim
        .get_until(&authorize_url(&app, "acme", &conn, "again"), &|u: &Url| {
            u.as_str().starts_with(APP_CB) || u.host_str() == Some(IDP_HOST)
        })
        .await
        .stopped();
    assert!(back.as_str().starts_with(APP_CB), "went to the IdP: {back}");
    let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let claims = redeem(&app.client, app.url("/token"), &client, &code).await;
    assert_eq!(claims["sub"], own["sub"], "{claims}");
    assert_eq!(claims["email"], EMAIL, "{claims}");
}

/// Another user's IdP-initiated Response, auto-posted into `b` from an
/// attacker's page and followed to the continuation.
async fn planted(b: &mut Browser, idp: &Idp, conn: &Value) -> Answer {
    let xml = idp.response_for(conn, None, "mallory@acme.test");
    let ans = post_acs_in(b, &acs(conn), &xml, None, &evil_page()).await;
    continue_in(b, &ans, &evil_page()).await
}

/// The form `id` (`confirm` or `cancel`) of the confirmation page of an
/// IdP-initiated sign-in: its action and fields.
fn confirmation_form(ans: &Answer, id: &str) -> (Url, Vec<(String, String)>) {
    assert_eq!(ans.status, StatusCode::OK, "no confirmation page: {ans:?}");
    assert_eq!(ans.code(), None, "{ans:?}");
    let form = crate::support::html_form::parse_forms(&ans.body)
        .into_iter()
        .find(|f| f.id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no {id} form on the confirmation page: {ans:?}"));
    assert_eq!(form.method, "POST");
    assert!(form.field("csrf").is_some_and(|c| c.len() >= 32), "{ans:?}");
    (Url::parse(&form.action).unwrap(), form.fields)
}

#[tokio::test]
async fn an_idp_initiated_sign_in_of_another_user_asks_before_replacing_the_session_and_needs_the_csrf_token() {
    let (app, client, idp, conn) = acme_idp_initiated().await;
    let mut b = Browser::new();

    // Signed in IdP-initiated as Ada, once confirmed; the same user again
    // is not asked.
    let ans = post_acs_in(&mut b, &acs(&conn), &idp.response(&conn, None), None, &idp_page()).await;
    let ans = continue_in_confirmed(&mut b, &ans, &idp_page()).await;
    assert_signed_in(
        &redeem(&app.client, app.url("/token"), &client, &ans.expect_code()).await,
        "acme",
    );
    let ans = post_acs_in(&mut b, &acs(&conn), &idp.response(&conn, None), None, &idp_page()).await;
    let ans = continue_in(&mut b, &ans, &idp_page()).await;
    assert_signed_in(
        &redeem(&app.client, app.url("/token"), &client, &ans.expect_code()).await,
        "acme",
    );
    let cookie = b.cookie(&app.base, COOKIE).unwrap();

    // Another user, IdP-initiated into this browser: a question, not a switch.
    let ask = planted(&mut b, &idp, &conn).await;
    assert!(ask.body.contains("mallory@acme.test"), "{ask:?}");
    assert!(ask.body.contains("Switch user?"), "{ask:?}");
    let (action, fields) = confirmation_form(&ask, "confirm");
    assert_eq!(b.cookie(&app.base, COOKIE).as_deref(), Some(cookie.as_str()));

    // Posted cross-site (an attacker's copy of the form): no session cookie
    // comes with it, so no token to match.
    let ans = post_form_in(&mut b, &action, &fields, &evil_page()).await;
    ans.expect_page(403, "callback.csrf_mismatch");
    // Posted without the token: refused (and the token is spent).
    let without: Vec<_> = fields.iter().filter(|(k, _)| k != "csrf").cloned().collect();
    let ans = post_form_in(&mut b, &action, &without, &app.base).await;
    ans.expect_page(403, "callback.csrf_missing");
    // The spent token, same-site: refused.
    let ans = post_form_in(&mut b, &action, &fields, &app.base).await;
    ans.expect_page(403, "callback.csrf_mismatch");

    // A wrong token on a fresh question: refused.
    let (action, mut fields) = confirmation_form(&planted(&mut b, &idp, &conn).await, "confirm");
    for f in fields.iter_mut().filter(|(k, _)| k == "csrf") {
        f.1 = "A".repeat(43);
    }
    let ans = post_form_in(&mut b, &action, &fields, &app.base).await;
    ans.expect_page(403, "callback.csrf_mismatch");

    // Still Ada.
    let back = b
        .get_until(&authorize_url(&app, "acme", &conn, "again"), &|u: &Url| {
            u.as_str().starts_with(APP_CB) || u.host_str() == Some(IDP_HOST)
        })
        .await
        .stopped();
    let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    assert_eq!(
        redeem(&app.client, app.url("/token"), &client, &code).await["email"],
        EMAIL
    );

    // Confirmed on the page, with its token: now the other user.
    let (action, fields) = confirmation_form(&planted(&mut b, &idp, &conn).await, "confirm");
    let ans = post_form_in(&mut b, &action, &fields, &app.base).await;
    let code = ans.expect_code();
    assert_eq!(
        redeem(&app.client, app.url("/token"), &client, &code).await["email"],
        "mallory@acme.test"
    );
}

/// Whether `browser` is signed in to acme: `/authorize` answers the app at
/// once (from the SSO session) rather than sending it to the IdP.
async fn signed_in(app: &TestApp, browser: &mut Browser, conn: &Value) -> bool {
    browser.clear_history();
    let next = browser
        .get_until(&authorize_url(app, "acme", conn, "probe"), &|u: &Url| {
            u.as_str().starts_with(APP_CB) || u.host_str() == Some(IDP_HOST)
        })
        .await
        .stopped();
    next.as_str().starts_with(APP_CB)
}

/// The reasons of acme's `signin.failed` audit events.
async fn failed_reasons(app: &TestApp) -> Vec<String> {
    let audited: Vec<String> = app
        .tenant_audit("acme", "signin.failed")
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    // The tenant's admins find the same in its failed sign-ins.
    let listed: Vec<String> = app
        .state
        .broker
        .failed_sign_ins(&portcullis::ids::TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.reason)
        .collect();
    for reason in &audited {
        assert!(listed.contains(reason), "{reason} audited but not listed: {listed:?}");
    }
    audited
}

/// Login CSRF with an IdP-initiated Response: the attacker's IdP signs one
/// for the attacker's own account, and the attacker's page auto-posts it
/// into a browser signed in nowhere. The continuation only asks (naming the
/// app, the organization and the identity): no session, no code. A
/// confirmation forged from the attacker's page (the form and token of the
/// attacker's own browser session, or no token) is refused with its reason
/// and audited; the person's cancel opens nothing; only the person's own
/// confirmation signs in.
#[tokio::test]
async fn an_unsolicited_response_auto_posted_into_a_browser_signed_in_nowhere_waits_for_the_persons_confirmation() {
    let (app, client, idp, conn) = acme_idp_initiated().await;

    let mut victim = Browser::new();
    let ask = planted(&mut victim, &idp, &conn).await;
    let (action, fields) = confirmation_form(&ask, "confirm");
    let (cancel, cancel_fields) = confirmation_form(&ask, "cancel");
    assert_eq!(action, cancel);
    for named in ["Continue signing in?", "Acme", "Gateway test app", "mallory@acme.test"] {
        assert!(ask.body.contains(named), "{named} not on the page: {ask:?}");
    }
    // The page's policy: its forms go to the gateway, and on to the app.
    let form_action = crate::browser_security::assert_page_headers(&ask.headers, &ask.body, false);
    assert!(form_action.split(' ').any(|s| s == "'self'"), "{form_action}");
    assert!(form_action.contains("https://app.example.test"), "{form_action}");
    assert!(!signed_in(&app, &mut victim, &conn).await, "the victim was signed in");
    assert!(app.tenant_audit("acme", "signin.succeeded").await.is_empty());

    // The attacker's own confirmation form (their browser session, their
    // token), auto-posted from their page into the victim's browser: the
    // cross-site POST carries no cookie, so the token matches no session.
    let mut attacker = Browser::new();
    let mut theirs = Vec::new();
    for _ in 0..2 {
        let xml = idp.response_for(&conn, None, "mallory@acme.test");
        let ans = post_acs_in(&mut attacker, &acs(&conn), &xml, None, &idp_page()).await;
        theirs.push(confirmation_form(
            &continue_in(&mut attacker, &ans, &idp_page()).await,
            "confirm",
        ));
    }
    let (their_action, their_fields) = &theirs[0];
    let forged = victim
        .send(
            reqwest::Method::POST,
            their_action,
            Some(their_fields),
            Some(&evil_page()),
        )
        .await;
    assert!(forged.cookies_sent.is_empty(), "{:?}", forged.cookies_sent);
    let forged = from_exchange(forged);
    assert_eq!(forged.code(), None, "{forged:?}");
    forged.expect_page(403, "callback.csrf_mismatch");
    // The same without a token.
    let without: Vec<_> = theirs[1].1.iter().filter(|(k, _)| k != "csrf").cloned().collect();
    let forged = post_form_in(&mut victim, &theirs[1].0, &without, &evil_page()).await;
    assert_eq!(forged.code(), None, "{forged:?}");
    forged.expect_page(403, "callback.csrf_missing");
    // Each refusal is audited, and ended the sign-in it named: the
    // attacker's own browser, which holds the token of its last page,
    // cannot confirm that one afterwards either.
    let reasons = failed_reasons(&app).await;
    for reason in ["callback.csrf_mismatch", "callback.csrf_missing"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
    let late = post_form_in(&mut attacker, &theirs[1].0, &theirs[1].1, &theirs[1].0).await;
    assert_eq!(late.code(), None, "{late:?}");
    late.expect_page(400, "callback.unknown_handle");
    assert!(!signed_in(&app, &mut victim, &conn).await, "the victim was signed in");
    assert!(app.tenant_audit("acme", "signin.succeeded").await.is_empty());

    // The person cancels on the page: nothing opens, no code, audited.
    let cancelled = post_form_in(&mut victim, &cancel, &cancel_fields, &cancel).await;
    assert_eq!(cancelled.code(), None, "{cancelled:?}");
    cancelled.expect_page(200, "callback.unsolicited_cancelled");
    assert!(failed_reasons(&app)
        .await
        .iter()
        .any(|r| r == "callback.unsolicited_cancelled"));
    assert!(!signed_in(&app, &mut victim, &conn).await, "signed in after a cancel");
    // The cancelled sign-in is gone (and the page's token spent).
    let after = post_form_in(&mut victim, &action, &fields, &action).await;
    assert_eq!(after.code(), None, "{after:?}");
    after.expect_page(403, "callback.csrf_mismatch");
    assert!(app.tenant_audit("acme", "signin.succeeded").await.is_empty());

    // Only the person's own confirmation, on the page, signs in.
    let ask = planted(&mut victim, &idp, &conn).await;
    let (action, fields) = confirmation_form(&ask, "confirm");
    let done = post_form_in(&mut victim, &action, &fields, &action).await;
    let claims = redeem(&app.client, app.url("/token"), &client, &done.expect_code()).await;
    assert_eq!(claims["email"], "mallory@acme.test", "{claims}");
    assert!(signed_in(&app, &mut victim, &conn).await);
}

/// A browser already signed in to the tenant as the very user an
/// IdP-initiated Response names is not asked: nothing about who is signed
/// in changes. The same browser signed in at another tenant only is.
#[tokio::test]
async fn an_unsolicited_response_for_the_user_this_browser_is_signed_in_as_is_not_asked() {
    let (app, client, idp, conn) = acme_idp_initiated().await;
    app.create_tenant("globex", "Globex", &["globex.test"]).await;
    let other = saml_connection(&app, "globex", "corp", &idp, true).await;

    let mut b = Browser::new();
    let own = sign_in_sp(&app, &idp, &conn, &client, &mut b, EMAIL).await;
    let ans = post_acs_in(&mut b, &acs(&conn), &idp.response(&conn, None), None, &idp_page()).await;
    let ans = continue_in(&mut b, &ans, &idp_page()).await;
    let claims = redeem(&app.client, app.url("/token"), &client, &ans.expect_code()).await;
    assert_eq!(claims["sub"], own["sub"], "{claims}");

    // At globex this browser is signed in nowhere: asked.
    let ans = post_acs_in(&mut b, &acs(&other), &idp.response(&other, None), None, &idp_page()).await;
    let ask = continue_in(&mut b, &ans, &idp_page()).await;
    confirmation_form(&ask, "confirm");
    assert!(ask.body.contains("Globex"), "{ask:?}");
}

#[tokio::test]
async fn a_continuation_handle_is_single_use_and_scoped_to_its_tenant() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    app.create_tenant("globex", "Globex", &["globex.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;
    saml_connection(&app, "globex", "corp", &idp, true).await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    let url = ans.expect_continue();
    // The same handle presented at another tenant's continuation: unknown there.
    let mut elsewhere = url.clone();
    elsewhere.set_path(&url.path().replace("/acme/", "/globex/"));
    answer(app.client.get(elsewhere).send().await.unwrap())
        .await
        .expect_page(400, "callback.unknown_handle");
    // A made-up handle.
    let mut made_up = url.clone();
    made_up.set_query(Some("handle=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    answer(app.client.get(made_up).send().await.unwrap())
        .await
        .expect_page(400, "callback.unknown_handle");
    // The real one works once: the confirmation page, then a sign-in.
    let ask = answer(app.client.get(url.clone()).send().await.unwrap()).await;
    confirmation_form(&ask, "confirm");
    let again = answer(app.client.get(url.clone()).send().await.unwrap()).await;
    assert_eq!(again.code(), None, "{again:?}");
    again.expect_page(400, "callback.unknown_handle");
    let done = answer(confirm_unsolicited(&app.client, &ask.set_cookies, &ask.body).await).await;
    let code = done.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
    // The continuation is not rate-limited: its misses write no audit
    // event, so made-up handles cannot push real events out of a tenant's
    // bounded log.
    let mut nowhere = url.clone();
    nowhere.set_path(&url.path().replace("/acme/", "/nosuch/"));
    answer(app.client.get(nowhere).send().await.unwrap())
        .await
        .expect_page(400, "callback.unknown_handle");
    let (status, log) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/acme/audit", None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(!log.to_string().contains("callback.unknown_handle"), "{log}");
}

/// `email_verified` reaches the app only when the connection trusts the IdP
/// for it *and* the address is in the tenant's own domains: a tenant's IdP
/// cannot vouch for someone else's address (the nOAuth account takeover).
#[tokio::test]
async fn email_verified_is_vouched_only_for_the_tenants_own_domains() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let connect = |id: &str, trust: bool| {
        json!({ "id": id, "metadata_xml": idp.metadata, "allow_idp_initiated": true,
                "default_client_id": APP_ID, "redirect_uri": APP_CB, "trust_email_verified": trust })
    };
    let trusted = app.create_saml_connection("acme", connect("trusted", true)).await;
    let plain = app.create_saml_connection("acme", connect("plain", false)).await;
    for (conn, email, verified) in [
        (&trusted, "ada@acme.test", true),
        (&trusted, "ceo@victim.test", false),
        (&trusted, "ada@sub.acme.test", false),
        (&plain, "ada@acme.test", false),
    ] {
        let mut browser = Browser::new();
        let xml = idp.response_for(conn, None, email);
        let ans = post_acs_in(&mut browser, &acs(conn), &xml, None, &idp_page()).await;
        let ans = continue_in_confirmed(&mut browser, &ans, &idp_page()).await;
        let claims = redeem(&app.client, app.url("/token"), &client, &ans.expect_code()).await;
        assert_eq!(claims["email"], email, "{claims}");
        assert_eq!(
            claims["email_verified"],
            json!(verified),
            "{email} via {}: {claims}",
            conn["id"]
        );
    }
}

// ---- Connections updated in place (issue 7, "connections") ----

/// `openssl x509 -fingerprint -sha256` of a PEM certificate, as lowercase hex
/// without colons (an independent computation of `fingerprint_sha256`).
fn openssl_fingerprint(cert_pem: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl command line tool is needed (apt-get install openssl)");
    child.stdin.take().unwrap().write_all(cert_pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

async fn sp_metadata(app: &TestApp, conn: &Value) -> String {
    let url = conn["sp_metadata_url"].as_str().unwrap();
    app.client.get(url).send().await.unwrap().text().await.unwrap()
}

fn idp_fingerprints(conn: &Value) -> Vec<String> {
    conn["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["use"] == "idp_signing")
        .map(|c| c["fingerprint_sha256"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn patched_metadata_keeps_the_sp_identity_and_the_new_idp_certificate_signs_in() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let old_idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &old_idp, true).await;
    assert_eq!(conn["status"], "active");
    assert_eq!(
        idp_fingerprints(&conn),
        vec![openssl_fingerprint(old_idp.idp["cert_pem"].as_str().unwrap())]
    );
    let md_before = sp_metadata(&app, &conn).await;

    let new_idp = Idp::new();
    let path = "/admin/v1/tenants/acme/connections/corp";
    let resp = app
        .client
        .patch(app.url(path))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/merge-patch+json")
        .body(json!({ "metadata_xml": new_idp.metadata }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let patched: Value = resp.json().await.unwrap();
    for key in ["sp_entity_id", "acs_url", "sp_metadata_url"] {
        assert_eq!(patched[key], conn[key], "{key} changed");
    }
    assert_ne!(patched["revision"], conn["revision"], "the revision must change");
    assert_eq!(
        idp_fingerprints(&patched),
        vec![openssl_fingerprint(new_idp.idp["cert_pem"].as_str().unwrap())]
    );
    assert_eq!(
        sp_metadata(&app, &patched).await,
        md_before,
        "SP metadata (keys) unchanged"
    );
    assert!(patched.get("sp_private_key_pem").is_none() && !patched.to_string().contains("PRIVATE KEY"));

    // The old IdP key no longer signs in; the new one does.
    // (An IdP-initiated refusal goes to the app as access_denied; the reason
    // code, saml.signature_invalid, is in the log.)
    let ans = post_acs(&app.client, &acs(&conn), &old_idp.response(&conn, None), None).await;
    assert_eq!(
        ans.expect_app_error(),
        "The sign-in response from your identity provider could not be accepted."
    );
    let ans = post_acs(&app.client, &acs(&conn), &new_idp.response(&conn, None), None).await;
    let code = continue_confirmed(&app.client, &ans).await.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");

    // Broken metadata: 400 naming the field, and the previous configuration keeps serving.
    let (status, p) = app
        .admin(
            reqwest::Method::PATCH,
            path,
            Some(json!({ "metadata_xml": "<not metadata" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "metadata_xml", "{p}");
    let (_, now) = app.admin(reqwest::Method::GET, path, None).await;
    assert_eq!(now["revision"], patched["revision"]);
    let ans = post_acs(&app.client, &acs(&conn), &new_idp.response(&conn, None), None).await;
    continue_confirmed(&app.client, &ans).await.expect_code();

    // A whole-body rule still holds after merging: idp-initiated needs its app.
    let (status, p) = app
        .admin(reqwest::Method::PATCH, path, Some(json!({ "default_client_id": null })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "default_client_id", "{p}");

    // The kind cannot change.
    let (status, p) = app
        .admin(reqwest::Method::PATCH, path, Some(json!({ "kind": "oidc" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "kind", "{p}");

    // Settings patch in place (attribute mapping, max session).
    let (status, p) = app
        .admin(
            reqwest::Method::PATCH,
            path,
            Some(json!({ "max_session_secs": 3600, "attribute_mapping": { "email": "mail" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["max_session_secs"], 3600);
    assert_eq!(p["sp_entity_id"], conn["sp_entity_id"]);
}

#[tokio::test]
async fn disable_and_enable_set_the_status_and_bump_the_revision() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    let base = "/admin/v1/tenants/acme/connections/corp";
    let (status, d) = app.admin(reqwest::Method::POST, &format!("{base}/disable"), None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "disabled");
    assert_ne!(d["revision"], conn["revision"]);
    let (_, got) = app.admin(reqwest::Method::GET, base, None).await;
    assert_eq!(got["status"], "disabled");
    let (_, e) = app.admin(reqwest::Method::POST, &format!("{base}/enable"), None).await;
    assert_eq!(e["status"], "active");
    let (status, p) = app
        .admin(reqwest::Method::PATCH, base, Some(json!({ "status": "pending_test" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["status"], "pending_test");
    let (status, p) = app
        .admin(reqwest::Method::PATCH, base, Some(json!({ "status": "paused" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "status");
    let (_, list) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/acme/connections", None)
        .await;
    assert_eq!(list["connections"][0]["status"], "pending_test");
}

/// The base64 DER certificates in `md`'s KeyDescriptors of `usage`.
fn key_descriptors(md: &str, usage: &str) -> Vec<String> {
    md.split(&format!("<md:KeyDescriptor use=\"{usage}\">"))
        .skip(1)
        .map(|s| {
            let start = s.find("<ds:X509Certificate>").unwrap() + "<ds:X509Certificate>".len();
            let end = s.find("</ds:X509Certificate>").unwrap();
            s[start..end].to_owned()
        })
        .collect()
}

fn sp_certs(conn: &Value, usage: &str, state: Option<&str>) -> Vec<String> {
    conn["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["use"] == usage && c["state"].as_str() == state)
        .map(|c| c["fingerprint_sha256"].as_str().unwrap().to_owned())
        .collect()
}

fn der_fingerprint(b64: &str) -> String {
    let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der))
}

#[tokio::test]
async fn sp_certificate_rotation_publishes_then_activates_then_retires() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    let base = "/admin/v1/tenants/acme/connections/corp/sp-certificates";
    let md = sp_metadata(&app, &conn).await;
    let old = key_descriptors(&md, "signing");
    assert_eq!(old.len(), 1);
    assert_eq!(sp_certs(&conn, "sp_signing", None), vec![der_fingerprint(&old[0])]);

    // Nothing to activate or retire yet.
    for step in ["activate", "retire"] {
        let (status, p) = app.admin(reqwest::Method::POST, &format!("{base}/{step}"), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{step}: {p}");
        assert_eq!(p["field"], "sp_certificates");
    }

    let (status, rotated) = app.admin(reqwest::Method::POST, &format!("{base}/rotate"), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["sp_entity_id"], conn["sp_entity_id"]);
    assert_eq!(rotated["acs_url"], conn["acs_url"]);
    let md = sp_metadata(&app, &conn).await;
    let signing = key_descriptors(&md, "signing");
    let encryption = key_descriptors(&md, "encryption");
    assert_eq!(signing.len(), 2, "{md}");
    assert_eq!(signing[0], old[0], "the current certificate stays first");
    let new = signing[1].clone();
    assert!(encryption.contains(&old[0]) && encryption.contains(&new));
    assert_eq!(
        sp_certs(&rotated, "sp_signing", Some("next")),
        vec![der_fingerprint(&new)]
    );
    assert_eq!(sp_certs(&rotated, "sp_signing", None), vec![der_fingerprint(&old[0])]);
    let (status, _) = app.admin(reqwest::Method::POST, &format!("{base}/rotate"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a second rotation waits for the first");

    let (status, active) = app
        .admin(reqwest::Method::POST, &format!("{base}/activate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(sp_certs(&active, "sp_signing", None), vec![der_fingerprint(&new)]);
    assert_eq!(
        sp_certs(&active, "sp_encryption", Some("previous")),
        vec![der_fingerprint(&old[0])]
    );
    let md = sp_metadata(&app, &conn).await;
    assert_eq!(key_descriptors(&md, "signing"), vec![new.clone()]);
    let encryption = key_descriptors(&md, "encryption");
    assert!(encryption.contains(&old[0]) && encryption.contains(&new), "{md}");

    let (status, retired) = app.admin(reqwest::Method::POST, &format!("{base}/retire"), None).await;
    assert_eq!(status, StatusCode::OK, "{retired}");
    let md = sp_metadata(&app, &conn).await;
    assert!(!md.contains(&old[0]), "the old certificate is gone: {md}");
    assert_eq!(key_descriptors(&md, "encryption"), vec![new.clone()]);
    assert_eq!(
        sp_certs(&retired, "sp_encryption", Some("previous")),
        Vec::<String>::new()
    );
    assert_eq!(retired["sp_entity_id"], conn["sp_entity_id"]);
}

#[tokio::test]
async fn a_migrated_entity_id_and_acs_alias_sign_in_and_the_canonical_acs_still_works() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let entity = "https://sso.previous-provider.example/saml/acme";
    let alias = app.url("/api/oauth/saml");
    let mut body = json!({
        "id": "corp", "metadata_xml": idp.metadata, "allow_idp_initiated": true,
        "default_client_id": APP_ID, "redirect_uri": APP_CB,
        "sp_entity_id": entity, "acs_url": alias.as_str(),
    });
    // Another origin is refused, naming the field.
    body["acs_url"] = json!("https://elsewhere.example/api/oauth/saml");
    body["kind"] = json!("saml");
    let (status, p) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "acs_url");
    // A path the gateway serves itself is refused too.
    body["acs_url"] = json!(app.url("/token").as_str());
    let (status, p) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "acs_url");

    body["acs_url"] = json!(alias.as_str());
    let conn = app.create_saml_connection("acme", body).await;
    assert_eq!(conn["sp_entity_id"], entity);
    assert_eq!(conn["acs_url"], alias.as_str());
    let md = sp_metadata(&app, &conn).await;
    assert!(md.contains(&format!("entityID=\"{entity}\"")), "{md}");
    assert!(md.contains(&format!("Location=\"{alias}\"")), "{md}");

    // A response with the migrated audience, addressed to the alias, signs in there.
    let ans = post_acs(&app.client, &alias, &idp.response(&conn, None), None).await;
    let code = continue_confirmed(&app.client, &ans).await.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
    // The canonical ACS of the same connection still works.
    let canonical = app.url("/saml/acme/corp/acs");
    let ans = post_acs(&app.client, &canonical, &idp.response(&conn, None), None).await;
    continue_confirmed(&app.client, &ans).await.expect_code();
    // A response for the derived (non-migrated) audience is refused.
    let mut derived = conn.clone();
    derived["sp_entity_id"] = json!(app.url("/saml/acme/corp/metadata").as_str());
    let ans = post_acs(&app.client, &alias, &idp.response(&derived, None), None).await;
    assert_eq!(
        ans.expect_app_error(),
        "The sign-in response from your identity provider could not be accepted."
    );
    // An unknown path is still a 404.
    let ans = post_acs(
        &app.client,
        &app.url("/api/oauth/other"),
        &idp.response(&conn, None),
        None,
    )
    .await;
    ans.expect_page(404, "http.not_found");

    // Another connection cannot take the same alias path.
    let (status, p) = app
        .admin(
            reqwest::Method::POST,
            "/admin/v1/tenants/acme/connections",
            Some(json!({ "id": "corp2", "kind": "saml", "metadata_xml": idp.metadata, "acs_url": alias.as_str() })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["field"], "acs_url");

    // Patching the ACS back to canonical removes the alias.
    let (status, p) = app
        .admin(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/acme/connections/corp",
            Some(json!({ "acs_url": null })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["acs_url"], canonical.as_str());
    assert_eq!(p["sp_entity_id"], entity);
    let ans = post_acs(&app.client, &alias, &idp.response(&conn, None), None).await;
    ans.expect_page(404, "http.not_found");
}

#[tokio::test]
async fn the_previous_sp_certificate_retires_itself_after_the_configured_overlap() {
    let clock = ManualClock::at(now());
    let app = spawn_app(options(&clock)).await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    let path = "/admin/v1/tenants/acme/connections/corp";
    let (status, p) = app
        .admin(reqwest::Method::PATCH, path, Some(json!({ "sp_key_overlap_secs": 10 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["field"], "sp_key_overlap_secs");
    let (status, p) = app
        .admin(
            reqwest::Method::PATCH,
            path,
            Some(json!({ "sp_key_overlap_secs": 3600 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    let old = key_descriptors(&sp_metadata(&app, &conn).await, "signing");
    let base = format!("{path}/sp-certificates");
    app.admin(reqwest::Method::POST, &format!("{base}/rotate"), None).await;
    let (status, _) = app
        .admin(reqwest::Method::POST, &format!("{base}/activate"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(sp_metadata(&app, &conn).await.contains(&old[0]));
    clock.advance(Duration::seconds(3601));
    let md = sp_metadata(&app, &conn).await;
    assert!(!md.contains(&old[0]), "retired after the overlap: {md}");
    let (_, got) = app.admin(reqwest::Method::GET, path, None).await;
    assert_eq!(sp_certs(&got, "sp_encryption", Some("previous")), Vec::<String>::new());
    // A new rotation may start once the previous key is gone.
    let (status, _) = app.admin(reqwest::Method::POST, &format!("{base}/rotate"), None).await;
    assert_eq!(status, StatusCode::OK);
}

const MULTIPLE_AUTHN: &str = "http://schemas.microsoft.com/claims/multipleauthn";

/// `PUT /admin/v1/tenants/{tenant}/mfa`.
async fn require_mfa(app: &TestApp, tenant: &str, required: bool) {
    let (status, body) = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/tenants/{tenant}/mfa"),
            Some(json!({ "required": required })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_tenant_requiring_mfa_asks_the_idp_for_it_and_refuses_an_answer_without_it() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    require_mfa(&app, "acme", true).await;

    // Asked for: RequestedAuthnContext with the MFA classes.
    let mut browser = Browser::new();
    let (request, id, relay) = start_login_xml(&mut browser, &app, "acme", &conn, "s1").await;
    assert!(
        request.contains("<samlp:RequestedAuthnContext Comparison=\"exact\">"),
        "{request}"
    );
    assert!(request.contains(MULTIPLE_AUTHN), "{request}");
    // A password-only answer is refused at the ACS, with the reason, to the app.
    let xml = idp.response_for(&conn, Some(&id), EMAIL);
    let ans = post_acs_in(&mut browser, &acs(&conn), &xml, Some(&relay), &idp_page()).await;
    let description = ans.expect_app_error();
    assert!(description.contains("login.mfa_required"), "{description}");
    // The tenant's admins see why (the portal's failed sign-ins).
    let failed = app
        .state
        .broker
        .failed_sign_ins(&portcullis::ids::TenantId::parse("acme").unwrap())
        .await
        .unwrap();
    assert!(failed.iter().any(|f| f.reason == "login.mfa_required"), "{failed:?}");

    // An answer showing MFA signs in; the ID token says how.
    let (id, relay) = start_login_in(&mut browser, &app, "acme", &conn, "s2").await;
    let xml = idp.response_with(&conn, Some(&id), EMAIL, MULTIPLE_AUTHN);
    let ans = post_acs_in(&mut browser, &acs(&conn), &xml, Some(&relay), &idp_page()).await;
    let ans = continue_in(&mut browser, &ans, &idp_page()).await;
    let claims = redeem(&app.client, app.url("/token"), &client, &ans.expect_code()).await;
    assert_signed_in(&claims, "acme");
    assert_eq!(claims["acr"], MULTIPLE_AUTHN, "{claims}");
    assert_eq!(claims["amr"], json!(["mfa"]), "{claims}");
}

#[tokio::test]
async fn an_sso_session_without_mfa_is_not_reused_once_mfa_is_required() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    let mut browser = Browser::new();
    let claims = sign_in_sp(&app, &idp, &conn, &client, &mut browser, EMAIL).await;
    assert_eq!(
        claims["acr"], "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        "{claims}"
    );
    // Without MFA required, the session is reused: straight back to the app.
    let reused = browser
        .get_until(&authorize_url(&app, "acme", &conn, "r1"), &|u: &Url| {
            u.as_str().starts_with(APP_CB)
        })
        .await
        .stopped();
    assert!(reused.query_pairs().any(|(k, _)| k == "code"), "{reused}");
    // Required now: the password-only session sends the browser to the IdP,
    // and the request asks for MFA.
    require_mfa(&app, "acme", true).await;
    let (request, _, _) = start_login_xml(&mut browser, &app, "acme", &conn, "r2").await;
    assert!(request.contains("RequestedAuthnContext"), "{request}");
}

#[tokio::test]
async fn an_app_requiring_mfa_asks_for_it_and_refuses_a_password_only_answer() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let created = app
        .admin_create(
            "/admin/v1/clients",
            json!({ "client_id": APP_ID, "redirect_uris": [APP_CB], "require_mfa": true }),
        )
        .await;
    assert!(created["client_secret"].is_string(), "{created}");
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    let mut browser = Browser::new();
    let (request, id, relay) = start_login_xml(&mut browser, &app, "acme", &conn, "s1").await;
    assert!(request.contains("RequestedAuthnContext"), "{request}");
    let xml = idp.response_for(&conn, Some(&id), EMAIL);
    let ans = post_acs_in(&mut browser, &acs(&conn), &xml, Some(&relay), &idp_page()).await;
    assert!(ans.expect_app_error().contains("login.mfa_required"), "{ans:?}");
}

#[tokio::test]
async fn an_answer_refused_after_its_validation_is_still_used_up() {
    // The assertion's id is claimed right after the signature, always to
    // its end, and provisioning and the checks after it follow the claim:
    // an answer refused by those checks cannot be posted again.
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;
    require_mfa(&app, "acme", true).await;
    let xml = idp.response(&conn, None);
    let first = post_acs(&app.client, &acs(&conn), &xml, None).await;
    assert!(first.expect_app_error().contains("login.mfa_required"), "{first:?}");
    // No longer required: the same answer would pass every other check now,
    // but it was used up.
    require_mfa(&app, "acme", false).await;
    let again = post_acs(&app.client, &acs(&conn), &xml, None).await;
    assert_eq!(again.code(), None, "{again:?}");
    assert_eq!(again.expect_app_error(), REPLAY_MESSAGE, "{again:?}");
    // Provisioning follows the claim: neither the refused answer nor its
    // replay wrote a user.
    let users = portcullis::store::Key::tenant("acme", "users", "index");
    let listed = app.state.store.set_members(&users).await.unwrap();
    assert!(listed.is_empty(), "users provisioned: {listed:?}");
    // A fresh answer of the IdP passes.
    let fresh = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    assert!(fresh.continue_url().is_some(), "{fresh:?}");
    assert_eq!(app.state.store.set_members(&users).await.unwrap().len(), 1);
}

/// A pending login is single use, like an OAuth `state`: the first answer
/// naming its RelayState ends it, whether or not it validates. A Response
/// signed with another key, posted from the browser that started the
/// login, is refused for its reason (`saml.signature_invalid`, sent back
/// to the app as `access_denied`); the same again gets
/// `callback.unknown_login`, and so does the IdP's valid Response for that
/// login after it: no session, no code. Before, a failed answer left the
/// login in place for any number of answers.
#[tokio::test]
async fn a_failed_answer_uses_up_its_pending_login() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;
    let (request_id, relay_state, mut browser) = start_login(&app, "acme", &conn, "s1").await;

    let forged = Idp::new().response(&conn, Some(&request_id));
    let first = post_acs_in(&mut browser, &acs(&conn), &forged, Some(&relay_state), &idp_page()).await;
    first.expect_app_error();
    assert_eq!(first.param("state").as_deref(), Some("s1"), "{first:?}");
    assert_eq!(failed_reasons(&app).await, ["saml.signature_invalid"]);

    let again = post_acs_in(&mut browser, &acs(&conn), &forged, Some(&relay_state), &idp_page()).await;
    again.expect_page(400, "callback.unknown_login");
    let garbage = post_acs_in(&mut browser, &acs(&conn), "<x/>", Some(&relay_state), &idp_page()).await;
    garbage.expect_page(400, "callback.unknown_login");
    let valid = idp.response(&conn, Some(&request_id));
    let late = post_acs_in(&mut browser, &acs(&conn), &valid, Some(&relay_state), &idp_page()).await;
    assert_eq!(late.code(), None, "{late:?}");
    late.expect_page(400, "callback.unknown_login");
    assert_eq!(browser.cookie(&app.base, COOKIE), None, "a session was opened");
}

/// An IdP's answer whose subject is far longer than any IdP's identifier
/// (here 4,000 bytes, within the ACS's body limit) is refused with
/// `identity.subject_too_long`, audited, and provisions nobody; the same
/// login's answer with an ordinary NameID then signs in.
#[tokio::test]
async fn an_oversized_subject_is_refused_with_its_reason_and_stores_no_user() {
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, false).await;

    let (request_id, relay_state, mut browser) = start_login(&app, "acme", &conn, "st-long").await;
    let huge = format!("{}@acme.test", "a".repeat(4000));
    let xml = idp.response_case(
        &conn,
        Some(&request_id),
        EMAIL,
        "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        json!({ "name_id": huge, "name_id_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent" }),
    );
    let ans = post_acs_in(&mut browser, &acs(&conn), &xml, Some(&relay_state), &idp_page()).await;
    ans.expect_app_error();
    let refused = app.tenant_audit("acme", "signin.failed").await;
    assert!(
        refused.iter().any(|e| e["reason"] == "identity.subject_too_long"),
        "{refused:?}"
    );
    let (status, users) = app
        .admin(reqwest::Method::GET, "/admin/v1/tenants/acme/users", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(users["users"].as_array().map(Vec::len), Some(0), "{users}");

    // An ordinary answer to a fresh login of the same browser signs in.
    let (request_id, relay_state) = start_login_in(&mut browser, &app, "acme", &conn, "st-ok").await;
    let xml = idp.response(&conn, Some(&request_id));
    let ans = post_acs_in(&mut browser, &acs(&conn), &xml, Some(&relay_state), &idp_page()).await;
    let ans = continue_in(&mut browser, &ans, &idp_page()).await;
    let code = ans.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "acme");
}
