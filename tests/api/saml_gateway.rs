//! SAML through the gateway's real HTTP ACS, over a real Redis: replay across
//! replicas, IdP-initiated on and off, a tampered RelayState, another
//! tenant's assertion, and the session cookie's attributes. Responses are
//! signed by signxml (tests/peers/saml/craft.py) with the key whose
//! certificate is in the metadata the admin registered.

use base64::Engine as _;
use chrono::Duration;
use portcullis::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::Read as _;
use url::Url;

use crate::saml_common::{attr_value, peer};
use crate::saml_crafted::{now, ts};
use crate::support::admin::RegisteredClient;
use crate::support::app::{spawn_app, AppOptions, TestApp};
use crate::support::browser::Browser;
use crate::support::gateway::spawn_with_public_url;
use crate::support::redis;

const IDP_ENTITY: &str = "https://idp.gateway.test/entity";
const IDP_HOST: &str = "idp.gateway.test";
const APP_ID: &str = "gw-app";
const APP_CB: &str = "https://app.example.test/callback";
const EMAIL: &str = "ada@acme.test";
const COOKIE: &str = "portcullis_session";
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
        self.response_as(conn, in_response_to, EMAIL)
    }

    /// Like `response`, for the person with address `email`.
    fn response_as(&self, conn: &Value, in_response_to: Option<&str>, email: &str) -> String {
        let case = json!({
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

/// What the gateway answered to an ACS post.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    location: Option<Url>,
    content_type: String,
    set_cookies: Vec<String>,
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

/// Starts an SP-initiated login at `/authorize` in a scripted browser and
/// stops where the gateway sends it to the IdP; returns the AuthnRequest's
/// ID and the RelayState.
async fn start_login(app: &TestApp, tenant: &str, conn: &Value, state: &str) -> (String, String) {
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
    let mut browser = Browser::new();
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
    (attr_value(&request, "ID").unwrap(), q("RelayState"))
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

    let (winners, refused): (Vec<_>, Vec<_>) = answers.iter().partition(|(_, ans)| ans.code().is_some());
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
    let code = winner.expect_code();
    assert_eq!(winner.param("state"), None, "{winner:?}");

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
    let app = gateway().await;
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    let client = register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    let code = ans.expect_code();
    assert_eq!(ans.param("state"), None, "{ans:?}");
    assert_eq!(ans.param("iss").as_deref(), Some(app.issuer().as_str()), "{ans:?}");
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

    let (request_id, relay_state) = start_login(&app, "acme", &conn, "st-1").await;
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

    // The very same Response with the original RelayState is good.
    let ans = post_acs(&app.client, &acs(&conn), &xml, Some(&relay_state)).await;
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
    let (request_id, relay_state) = start_login(&app, "globex", &conn_b, "st-b").await;
    let for_a = idp.response(&conn_a, Some(&request_id));
    let ans = post_acs(&app.client, &acs(&conn_b), &for_a, Some(&relay_state)).await;
    assert_eq!(ans.code(), None, "{ans:?}");
    ans.expect_app_error();
    assert_eq!(ans.param("state").as_deref(), Some("st-b"), "{ans:?}");

    // The control: the same IdP's answer for B's own SP signs in at B.
    let (request_id, relay_state) = start_login(&app, "globex", &conn_b, "st-b2").await;
    let for_b = idp.response(&conn_b, Some(&request_id));
    let ans = post_acs(&app.client, &acs(&conn_b), &for_b, Some(&relay_state)).await;
    let code = ans.expect_code();
    assert_signed_in(&redeem(&app.client, app.url("/token"), &client, &code).await, "globex");
}

fn cookie_attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn successful_acs_sets_an_http_only_same_site_lax_session_cookie_without_secure_on_http() {
    let app = gateway().await;
    assert_eq!(app.base.scheme(), "http");
    app.create_tenant("acme", "Acme", &["acme.test"]).await;
    register_app(&app).await;
    let idp = Idp::new();
    let conn = saml_connection(&app, "acme", "corp", &idp, true).await;

    let ans = post_acs(&app.client, &acs(&conn), &idp.response(&conn, None), None).await;
    ans.expect_code();
    let attrs = cookie_attributes(&ans.session_cookie());
    assert!(attrs.iter().any(|a| a == "httponly"), "{attrs:?}");
    assert!(attrs.iter().any(|a| a == "samesite=lax"), "{attrs:?}");
    assert!(!attrs.iter().any(|a| a == "secure"), "{attrs:?}");
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
    let attrs = cookie_attributes(&ans.session_cookie());
    assert!(attrs.iter().any(|a| a == "secure"), "{attrs:?}");
    assert!(attrs.iter().any(|a| a == "httponly"), "{attrs:?}");
    assert!(attrs.iter().any(|a| a == "samesite=lax"), "{attrs:?}");
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
        let ans = post_acs(&app.client, &acs(conn), &idp.response_as(conn, None, email), None).await;
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
